//! Rate limits per source and per API key (governor's GCRA), each replica counting its own.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A limiter with the per-minute quota it was built for.
type QuotaLimiter = (u32, Arc<DefaultDirectRateLimiter>);

/// Limiters by name (`source:<id>`, `key:<id>`), rebuilt when a quota changes.
#[derive(Clone, Default)]
pub struct RateLimits {
    limiters: Arc<Mutex<HashMap<String, QuotaLimiter>>>,
}

impl RateLimits {
    /// Takes one call from `name`'s budget of `per_minute` (0 means unlimited); returns how
    /// long to wait when the budget is spent.
    pub fn check(&self, name: &str, per_minute: u32) -> Result<(), Duration> {
        let Some(rate) = NonZeroU32::new(per_minute) else {
            return Ok(());
        };
        let limiter = {
            let Ok(mut limiters) = self.limiters.lock() else {
                // A poisoned lock only means another call panicked; limits are advisory then.
                return Ok(());
            };
            match limiters.get(name) {
                Some((quota, limiter)) if *quota == per_minute => limiter.clone(),
                // New, or its quota changed: a fresh budget (the name is copied only then).
                _ => {
                    let limiter = Arc::new(RateLimiter::direct(Quota::per_minute(rate)));
                    limiters.insert(name.to_owned(), (per_minute, limiter.clone()));
                    limiter
                }
            }
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_names_the_wait_and_zero_is_unlimited() {
        let limits = RateLimits::default();
        for _ in 0..1000 {
            assert!(limits.check("source:free", 0).is_ok());
        }
        assert!(limits.check("source:slow", 2).is_ok());
        assert!(limits.check("source:slow", 2).is_ok());
        let wait = limits
            .check("source:slow", 2)
            .expect_err("third call within the minute");
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(
            limits.check("source:other", 2).is_ok(),
            "budgets are per name"
        );
        // A changed quota starts a fresh budget.
        assert!(limits.check("source:slow", 3).is_ok());
    }
}

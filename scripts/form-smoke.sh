#!/usr/bin/env bash
# scripts/form-smoke.sh - a real browser posts a plain HTML form to capture's web-to-lead
# endpoint (POST /v1/forms/<key>).
#
# Starts its own capture (free ports, a fresh database dropped at exit), registers a form
# source, serves an HTML page from another origin, and has headless Chromium submit it:
#   1. the form post reaches the thank-you page (303) and stores one lead whose consent
#      record carries IP 127.0.0.1 and Chromium's user agent;
#   2. a post with the honeypot filled reaches the thank-you page too, and stores nothing;
#   3. a bad email is answered with a page naming the problem, the posted markup escaped;
#   4. screenshots of the form and of that page go to SCREENSHOT_DIR (default: a temp dir).
#
# Usage: scripts/form-smoke.sh [SCREENSHOT_DIR]
# Needs: `cargo build --workspace --bins` (target/debug/capture, or CARGO_PROFILE=release),
# chromium (`apt-get install chromium`), python3, psql, jq and `npm install` (for buf curl).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
PROFILE_DIR="${CARGO_PROFILE:-debug}"
CAPTURE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR/capture"
BUF="$ROOT/node_modules/.bin/buf"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"

fail() {
  printf 'form-smoke: FAIL: %s (logs in %s)\n' "$*" "${WORK:-?}" >&2
  exit 1
}
say() { printf 'form-smoke: %s\n' "$*" >&2; }

[[ -x $CAPTURE_BIN ]] || fail "$CAPTURE_BIN is missing: run cargo build --workspace --bins"
[[ -n $CHROMIUM ]] || fail "chromium is not installed (apt-get install -y chromium)"
[[ -x $BUF ]] || fail "buf is missing: run npm install"
for tool in python3 psql jq; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed"
done

# shellcheck source=scripts/infra.sh
source scripts/infra.sh
infra_ensure

WORK="$(mktemp -d)"
SHOTS="${1:-$WORK/screenshots}"
mkdir -p "$SHOTS" "$WORK/site"
DATABASE="lf_smoke_$(date +%s)_$$"
CAPTURE_PID=""
SITE_PID=""

cleanup() {
  set +e
  for pid in $CAPTURE_PID $SITE_PID; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  psql -q "$LEADFLOW_PG_URL/postgres" -c "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$WORK/site" "$WORK/chromium"
}
trap cleanup EXIT

psql -q "$LEADFLOW_PG_URL/postgres" -c "CREATE DATABASE $DATABASE" >/dev/null

# Development-only keys: this capture lives for one run against a throwaway database.
export CAPTURE_DATABASE_URL="$LEADFLOW_PG_URL/$DATABASE"
export CAPTURE_REDIS_URL="$LEADFLOW_REDIS_URL"
export CAPTURE_STREAM_PREFIX="$DATABASE:"
export CAPTURE_MIGRATE_ON_START=true
export CAPTURE_GRPC_ADDR=127.0.0.1:0
export CAPTURE_HTTP_ADDR=127.0.0.1:0
export CAPTURE_SHUTDOWN_GRACE_MS=2000
export CAPTURE_IDENTITY_HASH_KEY=smoke-identity-hash-key-0123456789abcdef
export CAPTURE_PII_KEY=1111111111111111111111111111111111111111111111111111111111111111
export CAPTURE_BLIND_INDEX_KEY=2222222222222222222222222222222222222222222222222222222222222222
export CAPTURE_API_KEY_PEPPER=smoke-api-key-pepper-0123456789abcdefghij
export RUST_LOG=info

ADMIN_KEY="$("$CAPTURE_BIN" create-api-key --name form-smoke --scope admin 2>/dev/null | grep '^lf_')"
"$CAPTURE_BIN" serve >"$WORK/capture.log" 2>&1 &
CAPTURE_PID=$!

# The page server picks a free port and says which.
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$WORK/site" >"$WORK/site.log" 2>&1 &
SITE_PID=$!

GRPC_ADDR=""
HTTP_ADDR=""
SITE_PORT=""
for _ in $(seq 1 120); do
  GRPC_ADDR="$(jq -Rr 'fromjson? | select(.message == "serving") | .grpc_addr' "$WORK/capture.log" | head -n1)"
  HTTP_ADDR="$(jq -Rr 'fromjson? | select(.message == "serving http") | .http_addr' "$WORK/capture.log" | head -n1)"
  SITE_PORT="$(sed -n 's/.* port \([0-9][0-9]*\).*/\1/p' "$WORK/site.log" | head -n1)"
  [[ -n $GRPC_ADDR && -n $HTTP_ADDR && -n $SITE_PORT ]] && break
  kill -0 "$CAPTURE_PID" 2>/dev/null || { cat "$WORK/capture.log" >&2; fail "capture exited"; }
  sleep 0.25
done
[[ -n $GRPC_ADDR && -n $HTTP_ADDR && -n $SITE_PORT ]] || fail "capture or the page server did not start"
SITE="http://127.0.0.1:$SITE_PORT"
say "capture grpc $GRPC_ADDR, http $HTTP_ADDR; page origin $SITE"

rpc() { # METHOD JSON
  "$BUF" curl --protocol grpc --http2-prior-knowledge \
    -H "authorization: Bearer $ADMIN_KEY" -d "$2" \
    "http://$GRPC_ADDR/leadflow.capture.v1.CaptureService/$1"
}

SOURCE=smoke-form
FORM_KEY="$(rpc CreateSource "$(jq -n --arg site "$SITE" --arg source "$SOURCE" '{
  source_id: $source,
  settings: {
    name: "Smoke contact form",
    kind: "SOURCE_KIND_FORM",
    dedupe: { mode: "DEDUPE_MODE_MERGE" },
    web_form: {
      allowed_origins: [$site],
      thank_you_url: ($site + "/thanks.html"),
      honeypot_field: "nickname"
    }
  }
}')" | jq -r '.source.settings.webForm.formKey')"
[[ $FORM_KEY == wf_* ]] || fail "no form key for the source"
ACTION="http://$HTTP_ADDR/v1/forms/$FORM_KEY"

# form_page FILE NICKNAME ONLOAD [EMAIL]: the contact form as a site would embed it.
form_page() {
  cat >"$WORK/site/$1" <<HTML
<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Contact Acme</title>
<style>
  body { font-family: sans-serif; max-width: 32em; margin: 2em auto; }
  label { display: block; margin: .6em 0 .2em; }
  input[type=text], input[type=email], input[type=tel] { width: 100%; padding: .4em; }
  .hp { position: absolute; left: -10000px; }
  button { margin-top: 1em; padding: .5em 1.5em; }
</style></head>
<body $3>
<h1>Talk to Acme sales</h1>
<form method="post" action="$ACTION">
  <label for="first_name">First name</label>
  <input type="text" id="first_name" name="first_name" value="Browser">
  <label for="last_name">Last name</label>
  <input type="text" id="last_name" name="last_name" value="Smoke">
  <label for="email">Work email</label>
  <input type="text" id="email" name="email" value="${4:-browser.smoke@acme-corp.example}">
  <label for="phone">Phone</label>
  <input type="tel" id="phone" name="phone" value="(415) 555-0177">
  <input type="hidden" name="utm_source" value="smoke">
  <input type="hidden" name="form_version" value="smoke-1">
  <input type="hidden" name="consent_text" value="I agree that Acme may email me about its products.">
  <div class="hp" aria-hidden="true"><label>Leave this empty <input type="text" name="nickname" value="$2" tabindex="-1" autocomplete="off"></label></div>
  <label><input type="checkbox" name="consent_email" checked> I agree that Acme may email me about its products.</label>
  <button type="submit">Send</button>
</form>
</body>
</html>
HTML
}
form_page form.html "" ""
form_page submit.html "" 'onload="document.forms[0].submit()"'
form_page honeypot.html "Cheap watches" 'onload="document.forms[0].submit()"'
form_page rejected.html "" 'onload="document.forms[0].submit()"' '&lt;script&gt;alert(1)&lt;/script&gt;'
cat >"$WORK/site/thanks.html" <<'HTML'
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Thanks</title></head>
<body><h1 id="leadflow-smoke-thanks">Thank you, we will be in touch.</h1></body></html>
HTML

browser() { # ARGS...: one headless Chromium run with a fresh profile
  rm -rf "$WORK/chromium"
  timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --no-first-run --user-data-dir="$WORK/chromium" "$@" 2>>"$WORK/chromium.log"
}

lead_count() {
  rpc ListLeads "{\"source\":\"$SOURCE\"}" | jq '.leads // [] | length'
}

say "1. a person submits the form"
browser --virtual-time-budget=10000 --dump-dom "$SITE/submit.html" >"$WORK/after-submit.html"
grep -q 'leadflow-smoke-thanks' "$WORK/after-submit.html" ||
  fail "the browser did not reach the thank-you page: $(head -c 600 "$WORK/after-submit.html")"
[[ $(lead_count) == 1 ]] || fail "expected one lead, found $(lead_count)"
LEAD="$(rpc ListLeads "{\"source\":\"$SOURCE\"}" | jq -c '.leads[0]')"
LEAD_ID="$(jq -r '.leadId' <<<"$LEAD")"
CONSENT="$(rpc GetLead "{\"lead_id\":\"$LEAD_ID\"}" | jq -c '.lead.consents[0]')"
[[ $(jq -r '.ipAddress' <<<"$CONSENT") == 127.0.0.1 ]] || fail "consent IP: $CONSENT"
jq -r '.userAgent' <<<"$CONSENT" | grep -q 'HeadlessChrome' || fail "consent user agent: $CONSENT"
[[ $(jq -r '.formUrl' <<<"$CONSENT") == "$SITE/" ]] || fail "consent form URL: $CONSENT"
say "   thank-you page reached; lead $LEAD_ID stored with consent from 127.0.0.1"

say "2. a bot fills the honeypot"
browser --virtual-time-budget=10000 --dump-dom "$SITE/honeypot.html" >"$WORK/after-honeypot.html"
grep -q 'leadflow-smoke-thanks' "$WORK/after-honeypot.html" ||
  fail "the honeypot post did not look accepted"
[[ $(lead_count) == 1 ]] || fail "the honeypot post stored a lead"
say "   answered as accepted, nothing stored"

say "3. a bad email gets a page naming the problem, markup escaped"
browser --virtual-time-budget=10000 --dump-dom "$SITE/rejected.html" >"$WORK/after-rejected.html"
grep -q 'Please check the form' "$WORK/after-rejected.html" ||
  fail "no error page: $(head -c 600 "$WORK/after-rejected.html")"
grep -q '&lt;script&gt;alert(1)&lt;/script&gt;' "$WORK/after-rejected.html" ||
  fail "the posted value is not shown escaped"
! grep -q '<script>' "$WORK/after-rejected.html" || fail "markup from the post ran on the page"
[[ $(lead_count) == 1 ]] || fail "the rejected post stored a lead"

say "4. screenshots of the form and the error page"
browser --window-size=900,760 --hide-scrollbars --screenshot="$SHOTS/form.png" "$SITE/form.html" >/dev/null
browser --window-size=900,500 --hide-scrollbars --virtual-time-budget=10000 \
  --screenshot="$SHOTS/rejected.png" "$SITE/rejected.html" >/dev/null
[[ -s $SHOTS/form.png && -s $SHOTS/rejected.png ]] || fail "no screenshot"
say "   $SHOTS/form.png $SHOTS/rejected.png"
say "OK"

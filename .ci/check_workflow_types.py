#!/usr/bin/env python3
"""Static check of UI-format ComfyUI workflows against a running server's /object_info (standard library only).

Used by .ci/comfyui_e2e.sh for templates that cannot run in CI by design (top-level ``extra.univs_ci =
"validate-only"``: they need models that are not shipped). For each workflow, every node type (root graph and
subgraph definitions) must exist in /object_info, and every link must connect an existing output slot to an
existing input whose type accepts it, with the rule the server itself applies when it validates a prompt
(comfy_execution/validation.py, non-strict): equal types, ``*`` on either side, a shared member of comma-separated
type lists (MultiType), a list-valued (combo) output into a COMBO input, or a MatchType input whose template
allows the type.

usage: check_workflow_types.py [--server http://127.0.0.1:8188 | --object-info FILE.json] WORKFLOW.json [...]
exit codes: 0 all workflows pass, 1 at least one problem (each one printed), 2 usage / IO error
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request

# UI-only nodes that never reach the server (same set as the frontend / run_workflow.py treat as virtual)
VIRTUAL_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "Comfy.Note", "Label (rgthree)",
                 "Fast Groups Bypasser (rgthree)", "Fast Groups Muter (rgthree)"}
ANY = "*"
MATCHTYPE = "COMFY_MATCHTYPE_V3"
COMBO = "COMBO"
SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20


def types_compatible(received, expected, expected_opts=None) -> bool:
    """Mirror of ComfyUI's validate_node_input(received, expected, strict=False), plus MatchType templates."""
    if received == expected:
        return True
    if received == ANY or expected == ANY:
        return True
    if expected == MATCHTYPE:
        allowed = ((expected_opts or {}).get("template") or {}).get("allowed_types")
        return not allowed or types_compatible(received, allowed)
    if received == MATCHTYPE:
        return True
    if isinstance(received, list) and (expected == COMBO or isinstance(expected, list)):
        return True  # combo-valued output into a combo input
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    r = {t.strip() for t in received.split(",")}
    e = {t.strip() for t in expected.split(",")}
    if ANY in r or ANY in e:
        return True
    return bool(r & e)


def _fmt(t) -> str:
    return "COMBO[...]" if isinstance(t, list) else str(t)


def _links(links):
    """-> list of (id, origin, origin_slot, target, target_slot, type) from list- or dict-form links."""
    out = []
    for l in links or []:
        if isinstance(l, dict):
            out.append((l.get("id"), l.get("origin_id"), l.get("origin_slot"), l.get("target_id"),
                        l.get("target_slot"), l.get("type")))
        else:
            out.append((l[0], l[1], l[2], l[3], l[4], l[5] if len(l) > 5 else None))
    return out


def _input_spec(nodedef, name):
    inputs = nodedef.get("input") or {}
    for sec in ("required", "optional"):
        spec = (inputs.get(sec) or {}).get(name)
        if spec is not None:
            t = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
            opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            return t, opts
    return None


class Checker:
    def __init__(self, object_info):
        self.oi = object_info
        self.problems: list[str] = []

    def err(self, where, msg):
        self.problems.append(f"{where}: {msg}")

    def check(self, wf, label):
        if not isinstance(wf, dict) or "nodes" not in wf:
            self.err(label, "not a UI-format workflow (no 'nodes')")
            return
        subgraphs = {sg.get("id"): sg for sg in ((wf.get("definitions") or {}).get("subgraphs") or [])}
        self._check_graph(wf, f"{label}", subgraphs, None)
        for sg_id, sg in subgraphs.items():
            self._check_graph(sg, f"{label} [subgraph {sg.get('name') or sg_id}]", subgraphs, sg)

    def _node_desc(self, n):
        title = n.get("title")
        return f"node {n.get('id')} ({n.get('type')}{', ' + repr(title) if title else ''})"

    def _check_graph(self, graph, label, subgraphs, sg):
        nodes = {n.get("id"): n for n in graph.get("nodes") or []}
        for n in nodes.values():
            t = n.get("type")
            if t in VIRTUAL_TYPES or t in subgraphs:
                continue
            if t not in self.oi:
                self.err(label, f"{self._node_desc(n)}: node type {t!r} is not in /object_info")
        for lid, o, os_, tg, ts, ltype in _links(graph.get("links")):
            where = f"{label} link {lid}"
            out_t = self._output_type(nodes, subgraphs, sg, o, os_, ltype, where)
            if out_t is None:
                continue
            self._check_target(nodes, subgraphs, sg, tg, ts, out_t, where, o, os_)

    def _output_type(self, nodes, subgraphs, sg, o, slot, ltype, where):
        if o == SUBGRAPH_IN:
            ins = (sg or {}).get("inputs") or []
            if sg is None or not isinstance(slot, int) or slot >= len(ins):
                self.err(where, f"origin is subgraph input slot {slot}, which does not exist")
                return None
            return ins[slot].get("type") or ANY
        n = nodes.get(o)
        if n is None:
            self.err(where, f"origin node {o} does not exist")
            return None
        t = n.get("type")
        if t in VIRTUAL_TYPES:  # Reroute / PrimitiveNode: type as recorded in the UI
            outs = n.get("outputs") or []
            return (outs[slot].get("type") if isinstance(slot, int) and slot < len(outs) else None) or ltype or ANY
        if t in subgraphs:
            outs = subgraphs[t].get("outputs") or []
            if not isinstance(slot, int) or slot >= len(outs):
                self.err(where, f"origin {self._node_desc(n)} has no output slot {slot}")
                return None
            return outs[slot].get("type") or ANY
        nd = self.oi.get(t)
        if nd is None:
            return None  # already reported as a missing node type
        outs = nd.get("output") or []
        if not isinstance(slot, int) or slot >= len(outs):
            self.err(where, f"origin {self._node_desc(n)} has no output slot {slot} (it has {len(outs)})")
            return None
        return outs[slot]

    def _check_target(self, nodes, subgraphs, sg, tg, slot, out_t, where, o, os_):
        if o == SUBGRAPH_IN:
            src = f"subgraph input {os_} ({_fmt(out_t)})"
        else:
            on = nodes.get(o)
            src = f"{on.get('type') if on else '?'} output {o}:{os_} ({_fmt(out_t)})"
        if tg == SUBGRAPH_OUT:
            outs = (sg or {}).get("outputs") or []
            if sg is None or not isinstance(slot, int) or slot >= len(outs):
                self.err(where, f"target is subgraph output slot {slot}, which does not exist")
                return
            exp = outs[slot].get("type") or ANY
            if not types_compatible(out_t, exp):
                self.err(where, f"{src} -> subgraph output {outs[slot].get('name')!r} ({_fmt(exp)}): incompatible types")
            return
        n = nodes.get(tg)
        if n is None:
            self.err(where, f"target node {tg} does not exist")
            return
        t = n.get("type")
        ins = n.get("inputs") or []
        if not isinstance(slot, int) or slot >= len(ins):
            self.err(where, f"target {self._node_desc(n)} has no input slot {slot} in the workflow")
            return
        inp = ins[slot]
        name = (inp.get("widget") or {}).get("name") or inp.get("name")
        if t in VIRTUAL_TYPES:
            return
        if t in subgraphs:
            sgins = {i.get("name"): i for i in subgraphs[t].get("inputs") or []}
            exp = (sgins.get(name) or {}).get("type")
            if exp is None:
                self.err(where, f"{src} -> {self._node_desc(n)}: subgraph has no input {name!r}")
            elif not types_compatible(out_t, exp):
                self.err(where, f"{src} -> {self._node_desc(n)} input {name!r} ({_fmt(exp)}): incompatible types")
            return
        nd = self.oi.get(t)
        if nd is None:
            return  # already reported as a missing node type
        spec = _input_spec(nd, name)
        if spec is None:
            self.err(where, f"{src} -> {self._node_desc(n)}: the node has no input named {name!r}")
            return
        exp, opts = spec
        if not types_compatible(out_t, exp, opts):
            self.err(where, f"{src} -> {self._node_desc(n)} input {name!r} ({_fmt(exp)}): incompatible types")


def fetch_object_info(server):
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=120) as r:
        return json.loads(r.read())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflows", nargs="+", metavar="WORKFLOW.json")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--server", default="http://127.0.0.1:8188")
    src.add_argument("--object-info", metavar="FILE", help="read /object_info from a saved JSON file instead")
    a = ap.parse_args(argv)
    try:
        if a.object_info:
            with open(a.object_info) as f:
                oi = json.load(f)
        else:
            oi = fetch_object_info(a.server)
    except Exception as e:  # noqa: BLE001
        print(f"check_workflow_types: cannot get /object_info: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in a.workflows:
        try:
            with open(path) as f:
                wf = json.load(f)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {path}: cannot read: {e}")
            failed += 1
            continue
        c = Checker(oi)
        c.check(wf, path)
        if c.problems:
            failed += 1
            print(f"FAIL {path}: {len(c.problems)} problem(s)")
            for p in c.problems:
                print(f"  - {p}")
        else:
            n_nodes = len(wf.get("nodes") or []) + sum(len(sg.get("nodes") or [])
                                                        for sg in (wf.get("definitions") or {}).get("subgraphs") or [])
            n_links = len(wf.get("links") or []) + sum(len(sg.get("links") or [])
                                                        for sg in (wf.get("definitions") or {}).get("subgraphs") or [])
            print(f"ok   {path}: {n_nodes} nodes, {n_links} links type-check against /object_info")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Project rules for the Dockerfiles, on top of hadolint.

    dockerfile_rules.py deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda

hadolint checks general good practice; these are the rules this project holds
its images to, some of which hadolint does not check (a HEALTHCHECK through
`glimpse health`, a non-root USER in the final stage). The script also stands
in for hadolint's key rules if hadolint cannot be installed:

  - every FROM names a tag (after ARG defaults are applied), never `latest`
  - the final stage switches to a non-root USER and has a HEALTHCHECK that runs
    `glimpse health` in exec form
  - ENTRYPOINT and CMD in exec (JSON) form
  - no `apt-get upgrade` / `dist-upgrade`; `apt-get install` uses `-y` and
    `--no-install-recommends`, and the same RUN removes /var/lib/apt/lists
  - COPY rather than ADD

Standard library only. Exit status 1 on any violation.
"""

from __future__ import annotations

import json
import re
import sys


def instructions(text: str):
    """(line number, INSTRUCTION, arguments) with continuations joined."""
    out = []
    buf, start = "", None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if start is None:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        parts = buf.strip().split(None, 1)
        out.append((start, parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        buf, start = "", None
    return out


def substitute(s: str, args: dict) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), s)


def check(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        ins = instructions(f.read())
    problems = []
    global_args: dict[str, str] = {}
    stages = []  # list of lists of instructions
    stage_names = set()
    seen_from = False
    for n, op, rest in ins:
        if op == "ARG" and not seen_from:
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
            continue
        if op == "FROM":
            seen_from = True
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = substitute(words[0], global_args)
            if len(words) >= 3 and words[1].upper() == "AS":
                stage_names.add(words[2].lower())
            if image.lower() in stage_names or image == "scratch":
                pass
            elif "$" in image:
                problems.append(f"{path}:{n}: FROM {words[0]}: ARG without a default")
            else:
                name_part = image.split("@")[0]
                tag = name_part.rsplit(":", 1)[1] if ":" in name_part.rsplit("/", 1)[-1] else None
                if tag is None and "@" not in image:
                    problems.append(f"{path}:{n}: FROM {image}: no tag (pin a version)")
                elif tag == "latest":
                    problems.append(f"{path}:{n}: FROM {image}: 'latest' tag")
            stages.append([])
        if stages:
            stages[-1].append((n, op, rest))
        if op == "ADD":
            problems.append(f"{path}:{n}: ADD: use COPY")
        if op == "RUN":
            if re.search(r"apt(-get)?\s+(-\S+\s+)*(dist-)?upgrade", rest):
                problems.append(f"{path}:{n}: RUN: apt-get upgrade in an image build")
            if re.search(r"apt-get\s+(-\S+\s+)*install", rest):
                if "--no-install-recommends" not in rest:
                    problems.append(f"{path}:{n}: apt-get install without --no-install-recommends")
                if not re.search(r"install\s+(.*\s)?(-y|--yes|-qy|-yq)\b", rest):
                    problems.append(f"{path}:{n}: apt-get install without -y")
                if "rm -rf /var/lib/apt/lists" not in rest:
                    problems.append(f"{path}:{n}: apt lists not removed in the same RUN")
        if op in ("ENTRYPOINT", "CMD"):
            try:
                if not isinstance(json.loads(rest), list):
                    raise ValueError
            except ValueError:
                problems.append(f"{path}:{n}: {op} not in exec (JSON) form")
    if not stages:
        return problems + [f"{path}: no FROM"]
    final = stages[-1]
    users = [rest for _, op, rest in final if op == "USER"]
    if not users:
        problems.append(f"{path}: final stage has no USER (runs as root)")
    else:
        user = users[-1].split(":")[0].strip()
        if user in ("root", "0"):
            problems.append(f"{path}: final stage USER is root")
    hcs = [(n, rest) for n, op, rest in final if op == "HEALTHCHECK"]
    if not hcs:
        problems.append(f"{path}: final stage has no HEALTHCHECK")
    else:
        n, rest = hcs[-1]
        m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
        try:
            cmd = json.loads(m.group(1)) if m else None
        except ValueError:
            cmd = None
        if not cmd or cmd[:2] != ["glimpse", "health"]:
            problems.append(f"{path}:{n}: HEALTHCHECK is not `CMD [\"glimpse\", \"health\", ...]` in exec form")
    return problems


def main(argv) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    problems = []
    for path in argv:
        problems += check(path)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    print(f"dockerfile rules: {len(argv)} file(s), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Checks the relative links of README.md and docs/*.md.

Every `[text](target)` and `![alt](target)` outside code must name a file that exists,
and its `#anchor`, if any, must be a heading of that file (by GitHub's anchor rules).
Every page under docs/ must be linked from README.md. Links to other sites are not
fetched.

Usage: tools/check-doc-links.py [FILE.md ...]   (default: README.md docs/*.md)
Prints one line per problem and exits 1 if there is any.
"""

import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^ {0,3}(```+|~~~+)")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text):
    """(line number, line) for the lines outside fenced and indented code blocks."""
    fence, prev_blank, indented = None, True, False
    for number, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            continue
        if line.startswith("    ") and (prev_blank or indented):
            indented = True
            continue
        if line.strip():
            indented = False
        prev_blank = not line.strip()
        yield number, line


def slug(heading):
    """GitHub's anchor for a heading: its text, lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    out = []
    for ch in text.strip().lower():
        if ch in "-_" or unicodedata.category(ch)[0] in "LN":
            out.append(ch)
        elif ch == " ":
            out.append("-")
    return "".join(out)


_anchors = {}


def anchors(path):
    if path not in _anchors:
        found, seen = set(), {}
        for _, line in prose(path.read_text(encoding="utf-8")):
            m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                base = slug(m.group(1))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
            found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
        _anchors[path] = found
    return _anchors[path]


def links(path):
    """(line number, target) for every link and image of a Markdown file."""
    for number, line in prose(path.read_text(encoding="utf-8")):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            yield number, target


def check(files):
    problems = []
    for path in files:
        rel = path.relative_to(ROOT)
        for number, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{rel}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor and anchor not in anchors(dest):
                problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    readme = ROOT / "README.md"
    if readme in files:
        linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(readme)}
        for page in sorted((ROOT / "docs").glob("*.md")):
            if page.resolve() not in linked:
                problems.append(f"README.md: {page.relative_to(ROOT)} is not linked")
    return problems


def main(argv):
    files = [Path(a).resolve() for a in argv] or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems = check(files)
    for p in problems:
        print(p)
    count = sum(1 for f in files for _ in links(f))
    print(f"check-doc-links: {len(files)} files, {count} links, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""mkdocs hook: the repository's README and the folder READMEs become pages of the site, where they live.

They are the prose of each area and stay where they are (beside the code they describe); the site shows them under
`source/<their repository path>` instead of copying them into docs/. Their relative links keep working between
included pages and into docs/; a link to anything else in the repository (a results JSON, a script, dev/ notes) is
shown as its repository path in code, since the site does not carry those files.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

# the README files the user guide links to (repository paths)
READMES = [
    "README.md",
    "ioaware/kernels/attention/flash/README.md", "ioaware/kernels/attention/decode/README.md",
    "ioaware/kernels/attention/sparse/README.md", "ioaware/kernels/conv/README.md",
    "ioaware/kernels/gemm/flat/README.md", "ioaware/kernels/lowrank/README.md", "ioaware/kernels/rnn/README.md",
    "ioaware/kernels/spmm/README.md",
    "ioaware/runtime/README.md", "ioaware/runtime/compress/README.md", "ioaware/runtime/kvtiers/README.md",
    "ioaware/runtime/prune/README.md", "ioaware/runtime/offload/data/README.md", "ioaware/distributed/README.md",
    "ioaware/sim/README.md", "ioaware/sim/cambricon/README.md", "ioaware/sim/csd/README.md",
    "ioaware/sim/pim/README.md", "ioaware/sim/pulsedl/README.md", "ioaware/sim/rdu/README.md",
    "ioaware/hardware/probe_gpu/README.md", "ioaware/plan/cosma/README.md", "ioaware/plan/nasaic/README.md",
]
PREFIX = "source"
# an inline code span (left alone), or a link / image whose text may hold code spans
_LINK = re.compile(r"`[^`\n]*`|(!?)\[((?:[^\]`]|`[^`\n]*`)*)\]\(([^)\s]+)\)")


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).parent
    for path in READMES:
        files.append(File.generated(config, f"{PREFIX}/{path}", abs_src_path=str(root / path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    src = page.file.src_uri
    if not src.startswith(PREFIX + "/"):
        return markdown
    repo_dir = posixpath.dirname(src[len(PREFIX) + 1:])
    docs_dir = posixpath.dirname(src)

    def fix(m: re.Match[str]) -> str:
        bang, text, target = m.groups()
        if target is None:  # a code span
            return m.group(0)
        if re.match(r"^[a-z]+:|^#", target):  # a URL or an anchor on this page
            return m.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(repo_dir, path))
        if repo_path in READMES:
            doc = f"{PREFIX}/{repo_path}"
        elif repo_path.startswith("docs/") and files.get_file_from_path(repo_path[5:]) is not None:
            doc = repo_path[5:]
        else:
            return f"{text} (`{repo_path}`)" if text and not bang else f"`{repo_path}`"
        rel = posixpath.relpath(doc, docs_dir)
        return f"{bang}[{text}]({rel}{'#' + anchor if anchor else ''})"

    # only prose: fenced code blocks are left as they are (and code spans, by _LINK)
    parts = re.split(r"(^```.*?^```[^\n]*$)", markdown, flags=re.S | re.M)
    parts[::2] = [_LINK.sub(fix, t) for t in parts[::2]]
    return "".join(parts)

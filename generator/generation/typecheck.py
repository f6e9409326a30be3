"""Type-check the generated bots with TypeScript, as `medport check` does: `checkJs` + `strict` against
@medplum/fhirtypes and @medplum/core, with exactly the globals a bot has on Medplum.

The program holds no declaration of a global beyond ECMAScript's (lib es2022) and these:
- `js/vmcontext.d.ts` (shipped with medport): console (Medplum's MockConsole), require limited to the
  modules the bots use ('crypto', 'zlib', 'timers/promises') and the members they call;
- the web classes both bot runtimes give on every supported Medplum release (WEB_GLOBALS: fetch, TextEncoder,
  URL, URLSearchParams), whose declarations are taken from TypeScript's own lib.dom.d.ts: `web_lib` keeps every
  interface and type alias of it (types create no value) and, of its `declare var` / `declare function`
  statements, only those in WEB_GLOBALS. So `setTimeout`, `process`, `Buffer`, `atob`, `document`, ...
  are errors, as they are failures on Medplum's vmcontext.

npm packages and Node come from the one discovery, `find_runtime(TYPECHECK_PACKAGES)` (typescript,
@medplum/fhirtypes, @medplum/core; `medport setup` installs them). Both bots are checked in one tsc run.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from medport.emulator.node import TYPECHECK_PACKAGES, NodeRuntimeMissing, Runtime, find_runtime, package_version

AMBIENT = Path(__file__).with_name("js") / "vmcontext.d.ts"
# The values of lib.dom that both bot runtimes have (vmcontext's sandbox ∩ Node's globals); console is
# declared in AMBIENT (Medplum's MockConsole has fewer methods than lib.dom's Console).
# What every supported Medplum release's vmcontext sandbox and Lambda both give (js/vmcontext.d.ts says which
# release added what): TextDecoder (5.0.5), the stream classes, Headers, Request and Response (5.2) are not values.
WEB_GLOBALS = frozenset({"fetch", "TextEncoder", "URL", "URLSearchParams"})
WEB_LIBS = ("lib.dom.d.ts", "lib.dom.iterable.d.ts", "lib.dom.asynciterable.d.ts")
COMPILER_OPTIONS = {
    "allowJs": True,
    "checkJs": True,
    "strict": True,
    "noEmit": True,
    # @medplum/core's declarations name pdfmake and Node types that are not installed: not the bots' errors.
    "skipLibCheck": True,
    "target": "es2022",
    "lib": ["es2022"],
    "module": "commonjs",
    "moduleResolution": "node10",
    "types": [],
}
_STATEMENT = re.compile(r"^(?:declare\s+(var|let|const|function|namespace)\s+([A-Za-z_$][\w$]*)|interface\s|type\s)")
_BLOCK_END = re.compile(r"^\};?\s*$")
_DIAGNOSTIC = re.compile(r"^(?P<file>.+?)\((?P<line>\d+),(?P<col>\d+)\): error (?P<code>TS\d+): (?P<text>.*)$")
_GLOBAL_DIAGNOSTIC = re.compile(r"^error (?P<code>TS\d+): (?P<text>.*)$")
MAX_LINE = 300


def web_lib(text: str, keep: frozenset[str] = WEB_GLOBALS) -> str:
    """TypeScript's lib.dom(.iterable) declarations with only the values in `keep`: every interface and type
    alias stays; a `declare var|let|const|function|namespace` stays only when its name is kept. lib.dom is
    generated and regular: each top-level statement starts at column 0, a block ends with `}` or `};` at
    column 0, and a statement's doc comment is the `/** ... */` just before it."""
    out: list[str] = []
    pending: list[str] = []  # a doc comment waiting for its statement
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _STATEMENT.match(line)
        if not m:
            if "no-default-lib" in line:
                pass
            elif pending or line.startswith("/**"):
                pending.append(line)
            else:
                out.append(line)
            i += 1
            continue
        end = i
        if line.rstrip().endswith("{"):
            while end + 1 < len(lines) and not _BLOCK_END.match(lines[end]):
                end += 1
        if m.group(1) is None or m.group(2) in keep:
            out.extend(pending)
            out.extend(lines[i : end + 1])
        pending = []
        i = end + 1
    return "\n".join(out) + "\n"


@lru_cache(maxsize=4)
def _web_lib_for(typescript_lib: Path, mtime: float) -> str:
    parts = []
    for name in WEB_LIBS:
        f = typescript_lib / name
        if f.is_file():
            parts.append(
                f"// from typescript/lib/{name} (values kept: medport.generator.generation.typecheck.WEB_GLOBALS)\n"
            )
            parts.append(web_lib(f.read_text("utf-8")))
    return "".join(parts)


def web_declarations(node_modules: Path) -> str:
    lib = node_modules / "typescript" / "lib"
    return _web_lib_for(lib, (lib / "lib.dom.d.ts").stat().st_mtime)


def tsconfig(files: list[str], node_modules: Path) -> dict:
    return {
        "compilerOptions": {**COMPILER_OPTIONS, "paths": {"@medplum/*": [str(node_modules / "@medplum" / "*")]}},
        "files": files,
    }


@dataclass
class TypecheckResult:
    problems: list[str] = field(default_factory=list)  # one line per error: `file:line:col: TSxxxx: text`
    seconds: float = 0.0  # the tsc run
    typescript: str = ""  # its version

    @property
    def ok(self) -> bool:
        return not self.problems


def _one_line(text: str, limit: int = MAX_LINE) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_diagnostics(output: str, workdir: Path, names: Mapping[Path, str]) -> list[str]:
    """tsc's `--pretty false` output as one line per error, files named as `names` says (else as tsc printed
    them). When tsc elaborates (indented lines: why a type is not assignable), the line keeps the head, cut
    short, and the innermost reason — e.g. `Type '{ ... }' is not assignable to … — Property 'batch' is missing
    in type ...`."""
    problems: list[str] = []
    head: str | None = None
    detail = ""

    def flush():
        if head is not None:
            problems.append(_one_line(head if not detail else _one_line(head, 120) + " — " + detail))

    for line in output.splitlines():
        m = _DIAGNOSTIC.match(line)
        g = None if m else _GLOBAL_DIAGNOSTIC.match(line)
        if m or g:
            flush()
            detail = ""
            if m:
                path = (workdir / m.group("file")).resolve()
                shown = names.get(path, m.group("file"))
                head = f"{shown}:{m.group('line')}:{m.group('col')}: {m.group('code')}: {m.group('text')}"
            elif g is not None:
                head = f"{g.group('code')}: {g.group('text')}"
        elif head is not None and line.startswith(" ") and line.strip():
            detail = line.strip()
    flush()
    return problems


def typecheck_files(
    files: Mapping[str, Path] | list[Path], runtime: Runtime | None = None, timeout: float = 120
) -> TypecheckResult:
    """Type-check bot files in one tsc run. `files`: display name -> path (or paths, shown by name)."""
    named = dict(files) if isinstance(files, Mapping) else {p.name: p for p in files}
    rt = runtime or find_runtime(TYPECHECK_PACKAGES)
    nm = rt.node_modules
    tsc = nm / "typescript" / "bin" / "tsc"
    if not tsc.is_file():
        raise NodeRuntimeMissing(f"{nm} has no typescript/bin/tsc: run `medport setup`")
    with tempfile.TemporaryDirectory(prefix="medport-tsc-") as tmp:
        work = Path(tmp)
        (work / "web.d.ts").write_text(web_declarations(nm), "utf-8")
        bots = {Path(p).resolve(): name for name, p in named.items()}
        config = tsconfig(["web.d.ts", str(AMBIENT), *map(str, bots)], nm)
        (work / "tsconfig.json").write_text(json.dumps(config, indent=2), "utf-8")
        t0 = time.monotonic()
        proc = subprocess.run(
            [rt.node, str(tsc), "-p", str(work / "tsconfig.json"), "--pretty", "false"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        seconds = time.monotonic() - t0
        problems = parse_diagnostics(proc.stdout, work, bots)
    if proc.returncode != 0 and not problems:
        raise RuntimeError(f"tsc exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-500:]}")
    return TypecheckResult(problems, seconds, package_version(nm, "typescript") or "")


def typecheck_sources(
    sources: Mapping[str, str], runtime: Runtime | None = None, shown_in: str = ""
) -> TypecheckResult:
    """Type-check bot code given as text (name -> code), e.g. `render_bots(cfg)`; errors name
    `<shown_in>/<name>`."""
    with tempfile.TemporaryDirectory(prefix="medport-bots-") as tmp:
        files = {}
        for name, code in sources.items():
            if name.endswith(".js"):
                p = Path(tmp) / name
                p.write_text(code, "utf-8")
                files[f"{shown_in.rstrip('/')}/{name}" if shown_in else name] = p
        return typecheck_files(files, runtime)

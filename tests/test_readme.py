"""Every command example in README.md and docs/*.md runs, as written, against a real `alma serve`.

The examples are the ```sh blocks of both files. Each command runs through bash with the real
`curl`, in order, against one `alma serve` that this module starts on a fresh SQLite store (the
chat model is the local OpenAI-compatible test server, `tests/openai_stub.py`). What a reader
would fill in by hand is filled from what the server answered before:

- `alma_...` is the key `alma serve` printed at its first start (README says to copy it);
- `<character id>`, `<instance id>`, `<fork id>`, `<memory id>`, `<lorebook id>` and
  `<response id>` are the ids of the character, instance, forked instance, memory snippet,
  lorebook and OpenAI response last answered by an earlier example;
- `<reply id>` is the last chat reply's id (`turn.reply_id`);
- `<next_cursor>` is the last `next_cursor` answered; `<timestamp>` is the present time;
- `localhost:8011` is the port the test's server listens on;
- `NAME=...` lines (like `KEY=...`) are run once, and the variable is set for the commands after.

A curl example must answer 2xx unless it ends with `# answers STATUS CODE` (then that status
and that error `code`). A ```json block right after a ```sh block is the answer shown for the
block's last command: the real answer must have the same fields, at every level (values differ:
ids, times), so the documentation never shows a field the API does not send, nor misses one.

Skipped, each for its reason (see SKIPPED): commands that install or start alma (`./scripts/*`,
`pip install`, `alma serve`: the test starts its own server), Docker (`docker compose`, the
`.env` it reads), and the routes that need the speech-to-text model (transcriptions,
translations and voice turns; tests/test_audio_api.py covers them), which this test does not
load to stay fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from alma.settings import Settings
from tests.cli import ALMA, KEY_RE, free_port, running, wait_for_health
from tests.openai_stub import OpenAIStub

# The module's real `alma serve` takes a while to start: the fast loop leaves it out.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The guides README links to; the API reference has a test of its own, and local-models.md is a
# record of how models were measured (downloads, long benchmark runs), not examples to run.
GUIDES = sorted(
    p for p in (ROOT / "docs").glob("*.md") if p.name not in ("api.md", "local-models.md")
)
API_REFERENCE = ROOT / "docs" / "api.md"

SKIPPED = {
    "installs or starts alma (this test starts its own `alma serve`)": re.compile(
        r"^(\./scripts/|pip install|source )|\balma serve\b"
    ),
    "needs Docker": re.compile(r"^(docker |cp \.env\.example )"),
    "needs the speech-to-text model, which this test does not load (see test_audio_api.py)": (
        re.compile(r"/v1/audio/(transcriptions|translations)|/v1/instances/[^/]+/voice\b")
    ),
}
EXPECTED = re.compile(r"#\s*answers (\d{3})(?: (\w+))?")
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=")
PLACEHOLDER = re.compile(r"<([a-z_]+(?: [a-z_]+)*)>")


@dataclass(frozen=True)
class Example:
    command: str
    line: int
    shown: str | None  # the JSON answer the document shows for this command, if any


def examples(path: Path) -> list[Example]:
    """The commands of the ```sh blocks, one per logical line (continued with a backslash or
    inside quotes), each block's last command with the ```json block that follows it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    n = 0
    while n < len(lines):
        if lines[n].strip() != "```sh":
            n += 1
            continue
        n += 1
        block: list[Example] = []
        pending, start = "", 0
        while lines[n].strip() != "```":
            text = lines[n]
            n += 1
            if not pending and (not text.strip() or text.lstrip().startswith("#")):
                continue
            if not pending:
                start = n
            pending = f"{pending}\n{text}" if pending else text
            if pending.endswith("\\") or not _complete(pending):
                continue
            block.append(Example(pending.strip(), start, None))
            pending = ""
        assert not pending, f"{path.name}:{start}: an unfinished command"
        n += 1
        after = n
        while after < len(lines) and not lines[after].strip():
            after += 1
        if block and after < len(lines) and lines[after].strip() == "```json":
            end = lines.index("```", after + 1)
            last = block[-1]
            block[-1] = Example(last.command, last.line, "\n".join(lines[after + 1 : end]))
            n = end + 1
        found += block
    return found


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # a quote still open: the command goes on on the next line
        return False
    return True


def skip_reason(command: str) -> str | None:
    return next((why for why, rule in SKIPPED.items() if rule.search(command)), None)


@dataclass
class Server:
    port: int
    key: str  # the one `alma serve` printed at its first start
    env: dict[str, str]
    stub: OpenAIStub


@dataclass
class Reader:
    """Runs a document's examples in order, as a reader would, filling in what they would."""

    server: Server
    workdir: Path
    env: dict[str, str]
    known: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def run(self, example: Example, where: str) -> None:
        why = skip_reason(example.command)
        if why is not None:
            self.skipped.append((example.command, why))
            return
        command = self.filled(example.command, where)
        assignment = ASSIGNMENT.match(command)
        if assignment:
            name = assignment.group(1)
            result = self.bash(f'{command}\nprintf %s "${name}"', where)
            assert result.stdout, f"{where}: `{example.command}` set {name} to nothing"
            self.env[name] = result.stdout
            return
        headers = self.workdir / ".headers"
        headers.write_text("")
        shell = f'curl() {{ command curl --dump-header {shlex.quote(str(headers))} "$@"; }}\n'
        result = self.bash(shell + command, where)
        self.ran.append(example.command)
        statuses = re.findall(r"^HTTP/\S+ (\d{3})", headers.read_text(), re.MULTILINE)
        if "curl " not in command:
            return
        assert statuses, f"{where}: `{command}` got no HTTP answer:\n{result.stderr}"
        status = int(statuses[-1])
        body = _json(result.stdout)
        expected = EXPECTED.search(example.command)
        if expected is None:
            assert 200 <= status < 300, f"{where}: `{command}` answered {status}:\n{result.stdout}"
        else:
            assert status == int(expected.group(1)), (
                f"{where}: `{command}` answered {status}, not {expected.group(1)}:\n{result.stdout}"
            )
            if expected.group(2):
                code = body.get("error", {}).get("code") if isinstance(body, dict) else None
                assert code == expected.group(2), f"{where}: error code {code}:\n{result.stdout}"
        if example.shown is not None:
            shown = json.loads(example.shown)
            assert body is not None, f"{where}: `{command}` answered no JSON:\n{result.stdout}"
            differences = shape_differences(shown, body)
            assert not differences, (
                f"{where}: the answer shown differs from the real one in its fields: "
                f"{'; '.join(differences)}\nreal answer:\n{json.dumps(body, ensure_ascii=False)}"
            )
        self.learn(body)

    def filled(self, command: str, where: str) -> str:
        command = command.replace("alma_...", self.server.key)
        command = re.sub(r"\b(localhost|127\.0\.0\.1):8011\b", f"\\1:{self.server.port}", command)

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "timestamp":
                return datetime.now(UTC).isoformat().replace("+00:00", "Z")
            assert name in self.known, (
                f"{where}: nothing answered before gives <{name}> (known: {sorted(self.known)})"
            )
            return self.known[name]

        return PLACEHOLDER.sub(value, command)

    def learn(self, body: Any) -> None:
        """Remembers the ids (and the cursor) an answer gives, for the placeholders after it."""
        if not isinstance(body, dict):
            return
        if body.get("next_cursor"):
            self.known["next_cursor"] = body["next_cursor"]
        if isinstance(body.get("turn"), dict) and "reply_id" in body["turn"]:
            self.known["reply id"] = body["turn"]["reply_id"]
        if "id" not in body:
            return
        if "personality" in body:
            self.known["character id"] = body["id"]
        elif "character_id" in body:
            self.known["fork id" if body.get("forked_from") else "instance id"] = body["id"]
        elif "instance_id" in body and "importance" in body:
            self.known["memory id"] = body["id"]
        elif "entries" in body and "scan_depth" in body:
            self.known["lorebook id"] = body["id"]
        elif body.get("object") == "response":
            self.known["response id"] = body["id"]

    def bash(self, script: str, where: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (
            f"{where}: exit {result.returncode}\n{script}\n{result.stdout}\n{result.stderr}"
        )
        return result


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def shape_differences(shown: Any, real: Any, path: str = "answer") -> list[str]:
    """Where the shown answer and the real one differ in their fields (not in their values)."""
    if isinstance(shown, dict) and isinstance(real, dict):
        found = [f"{path}.{k} is shown but not answered" for k in shown.keys() - real.keys()]
        found += [f"{path}.{k} is answered but not shown" for k in real.keys() - shown.keys()]
        for k in shown.keys() & real.keys():
            found += shape_differences(shown[k], real[k], f"{path}.{k}")
        return found
    if isinstance(shown, list) and isinstance(real, list):
        if bool(shown) != bool(real):
            return [f"{path} is shown {'with' if shown else 'without'} items, answered the other"]
        return shape_differences(shown[0], real[0], f"{path}[0]") if shown else []
    containers = (dict, list)
    if shown is None or real is None:
        return []
    if isinstance(shown, containers) or isinstance(real, containers):
        return [f"{path} is shown as {type(shown).__name__}, answered as {type(real).__name__}"]
    return []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("curl") is None:
        message = "NO CURL: the README's examples are curl commands and cannot be run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        warnings.warn(message + " -- SKIPPING tests/test_readme.py", stacklevel=1)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("readme")
    settings = Settings(data_dir=root / "data", _env_file=None)  # type: ignore[call-arg]
    port = free_port()
    log = root / "serve.log"
    with OpenAIStub() as stub:
        env = {
            "OPENAI_API_KEY": "sk-test-alma-0123456789",
            "OPENAI_BASE_URL": stub.base_url,
            "ALMA_MEMORY_FORMATION": "false",  # its requests would reach the stub too
            "ALMA_TTS_ENGINE": "espeak",  # offline: gTTS would need Google's service
            "ALMA_MODEL_MAX_RETRIES": "0",
            "ALMA_READ_MODEL_WAIT_S": "30",  # a loaded test machine: wait rather than flake
            "ALMA_CONSISTENCY_WAIT_S": "60",
        }
        with running(settings, ["serve", "--port", str(port)], log, env) as process:
            wait_for_health(f"http://127.0.0.1:{port}", process, log)
            printed = KEY_RE.findall(log.read_text(encoding="utf-8"))
            assert len(printed) == 1, log.read_text(encoding="utf-8")
            shell_env = {
                name: value
                for name, value in os.environ.items()
                if not name.startswith("ALMA_") and "proxy" not in name.lower()
            }
            shell_env.update(
                ALMA_DATA_DIR=str(settings.data_dir),
                PATH=f"{Path(ALMA).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            )
            yield Server(port, printed[0], shell_env, stub)


def run_document(path: Path, server: Server, workdir: Path) -> Reader:
    reader = Reader(server, workdir, dict(server.env))
    run_examples(path, reader)
    return reader


def run_examples(path: Path, reader: Reader) -> None:
    for example in examples(path):
        reader.run(example, f"{path.relative_to(ROOT)}:{example.line}")


def test_every_readme_example_runs(server: Server, tmp_path: Path) -> None:
    """README's examples, then those of the guides in docs/ it links to (the API reference has a
    test of its own), in one walk: a guide's example may use what README's made."""
    reader = run_document(README, server, tmp_path)
    for guide in GUIDES:
        run_examples(guide, reader)
    curls = [c for c in reader.ran if c.startswith("curl ")]
    assert len(curls) >= 5, reader.ran  # the "Try it" walk: a character, an instance, ...
    assert any("memories/search" in c for c in curls)
    assert all(why for _, why in reader.skipped)


def test_every_api_reference_example_runs(server: Server, tmp_path: Path) -> None:
    reader = run_document(API_REFERENCE, server, tmp_path)
    assert any("/chat" in c for c in reader.ran)
    assert server.stub.requests, "no chat example reached the model"


def test_the_api_reference_names_every_route(server: Server) -> None:
    """docs/api.md has a section for each method and path the running server serves."""
    text = API_REFERENCE.read_text(encoding="utf-8")
    spec = httpx.get(f"http://127.0.0.1:{server.port}/openapi.json", timeout=10).json()
    routes = [f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops]
    missing = [route for route in routes if f"### {route}" not in text]
    assert routes and not missing, f"docs/api.md has no section for: {missing}"

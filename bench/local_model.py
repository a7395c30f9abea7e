"""Offline chat models compared on this machine: speed, memory and in-character quality (issue 16).

Run from the repository root:
`python bench/local_model.py [--model packaged|NAME|LABEL=FILE.gguf ...] [--questions N]
[--turns N] [--quick] [--replies DIR]`.

Each `--model` is measured in turn: `packaged` is the SmolLM2-135M that alma answers with when
there is no key (the only one measured when no `--model` is given). Every setting runs in a
child process of its own, so the resident memory it reports is that model's, through alma's own
local backend as `alma serve` runs it with no key: `LocalModelServer` (llama.cpp via xllamacpp,
alma's context of 2048, seed 42, `--threads`, 1 by default as alma) reached through
`OpenAIModel`, streaming. Per setting:

- load: `LocalModelServer.load_s`; resident memory (VmRSS) of the process before the load and
  after it, and its peak (VmHWM) once everything ran;
- time to first token of a conversation whose prompt is ~600 tokens: one conversation per
  character, its prompts built by alma's `build_prompt` (persona, memory text, recent
  conversation, recollections, question), the character's recent conversation repeated until the
  first prompt holds 600 tiktoken tokens (the model's own counts are printed beside), then its
  questions asked in turn, each reply added to the conversation (which the token budget cuts
  from the oldest when it is full). Each turn recalls the 3 of the character's 5 memories that
  share the most words with its question, so what is recalled changes from turn to turn, as in
  an instance with more memories than a prompt shows. Printed: the first turn (cold: the first
  prompt of its character the server sees, so no cached prefix shortens it) and the later ones
  (warm: llama.cpp keeps what it read, and reads again only what follows the first
  difference), medians over the four characters; and, on a server of its own started afterwards
  (nothing read yet, as after `alma serve` starts), each character's first turn after alma read
  its opening ahead (`LocalModelServer.warm`, what `chat/warm.py` does in the background when
  `alma serve` starts and when an instance or its character is created or edited), with the
  tokens and seconds the reading ahead took;
- tokens/s: the streamed replies' tokens after the first, over the time after the first.
  Both this and the first token are also given in the process's CPU seconds: what the model
  costs when it has a core to itself, which a busy machine's wall clock hides;
- quality: the 40 questions of tests/data/local_model (20 Spanish, 20 English, 4 characters),
  each prompt built by alma's `build_prompt`, at most 160 tokens, temperature 0.8 (alma's
  default), the questions interleaved across characters. llama.cpp keeps the states of earlier
  prompts in memory, so a question reuses its character's persona and conversation as computed
  before, as consecutive turns with one instance do in alma. Printed: the share of replies
  passing every check, and each check, per language (the key fact over the questions that have
  one); the turn time p50 and p95.

`--batch-threads N`: threads that read the prompt (unset: every core, as alma; the reply is
generated on `--threads`). `--questions N` asks N of each character's 10 questions, spread over
its list (its last three are in the other language), for a shorter run; `--turns N`: turns per
conversation (4); `--quick` is `--questions 2 --turns 2`. `--replies DIR` writes every reply with
its checks to DIR/<label>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/local_model.py` puts bench/ first on sys.path: import from the root instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from alma.chat.prompt import Message, Recollection, Turn  # noqa: E402
from alma.llm import tokens  # noqa: E402
from alma.llm.client import Completion, OpenAIModel  # noqa: E402
from alma.llm.local import (  # noqa: E402
    LOCAL_MODELS,
    LocalModelServer,
    default_cache,
    model_file,
    packaged_model_path,
)
from alma.projections.ranking import fold  # noqa: E402
from bench.report import Row, log, machine_load, print_table  # noqa: E402
from tests.local_model_eval import (  # noqa: E402
    CHECKS,
    EvalCharacter,
    EvalTurn,
    characters,
    load,
    score,
)

MAX_TOKENS = 160
TEMPERATURE = 0.8
CONTEXT = 2048
LONG_PROMPT = 600  # tiktoken tokens of a conversation's first prompt
RECALLED = 3  # memories recalled in each turn of a conversation, of a character's 5
# The bar for the default local model.
MIN_TOKENS_PER_S = 8.0
MAX_FIRST_TOKEN_S = 1.5
MIN_PASS = 0.8
MAX_TURN_S = 4.0


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def streamed(model: OpenAIModel, messages: Sequence[Message]) -> dict[str, Any]:
    """One streamed reply: its text, finish reason, tokens, time to the first delta and in all,
    in wall-clock seconds and in the process's CPU seconds (llama.cpp's thread included)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    first: tuple[float, float] | None = None
    for part in model.stream(messages, MAX_TOKENS, TEMPERATURE):
        if isinstance(part, Completion):
            ended = (time.perf_counter(), time.process_time())
            return {
                "text": part.text,
                "finish_reason": part.finish_reason,
                "prompt_tokens": part.prompt_tokens,
                "completion_tokens": part.completion_tokens,
                "first_s": (first or ended)[0] - started,
                "total_s": ended[0] - started,
                "first_cpu_s": (first or ended)[1] - cpu_started,
                "total_cpu_s": ended[1] - cpu_started,
            }
        if first is None:
            first = (time.perf_counter(), time.process_time())
    raise RuntimeError("the stream ended without a completion")


def long_history(model: OpenAIModel, character: EvalCharacter) -> list[Turn]:
    """The character's recent conversation repeated until its first prompt holds LONG_PROMPT
    tokens."""
    history = list(character.history)
    while True:
        first = character.prompt(
            character.questions[0]["question"], model.context_window, MAX_TOKENS, history
        )
        if tokens.count_messages(first) >= LONG_PROMPT:
            return history
        history += character.history


def conversation(model: OpenAIModel, character: EvalCharacter, turns: int) -> list[dict[str, Any]]:
    """`turns` of the character's questions asked in turn, each reply added to the conversation,
    which starts with the character's recent conversation repeated to LONG_PROMPT tokens."""
    history = long_history(model, character)
    said = []
    for number, item in enumerate(character.questions[:turns]):
        question = item["question"]
        messages = character.prompt(
            question, model.context_window, MAX_TOKENS, history, recalled(character, question)
        )
        reply = streamed(model, messages)
        said.append({**reply, "turn": number})
        history += [Turn("user", question), Turn("assistant", reply["text"])]
    firsts = ", ".join(f"{r['first_s']:.2f}" for r in said)
    log(f"{character.id}: first token {firsts} s")
    return said


def recalled(character: EvalCharacter, question: str) -> list[Recollection]:
    """The RECALLED memories that share the most words with the question (ties: the earlier)."""
    asked = set(fold(question).split())
    ranked = sorted(character.memories, key=lambda m: -len(asked & set(fold(m.text).split())))
    return ranked[:RECALLED]


def interleaved(turns: Sequence[EvalTurn], per_character: int) -> list[EvalTurn]:
    """`per_character` questions of each character, evenly spread over its list, in round robin
    over the characters."""
    by_character: dict[str, list[EvalTurn]] = {}
    for turn in turns:
        by_character.setdefault(turn.character, []).append(turn)
    queues = [
        [group[i * len(group) // per_character] for i in range(min(per_character, len(group)))]
        for group in by_character.values()
    ]
    order = []
    for index in range(max(len(q) for q in queues)):
        order.extend(q[index] for q in queues if index < len(q))
    return order


def read_ahead(path: str, threads: int, batch_threads: int | None) -> list[dict[str, Any]]:
    """On a server of its own (nothing read yet, as after `alma serve` starts): every
    character's opening read ahead as alma's `Warmer` does (`LocalModelServer.warm`), then each
    one's first question; with the tokens and seconds the reading ahead took."""
    server = LocalModelServer(
        path, n_threads=threads, context=CONTEXT, seed=42, n_threads_batch=batch_threads
    )
    model = server.client()
    streamed(model, [{"role": "user", "content": "Hi"}])  # first use allocates buffers
    cast = [(character, long_history(model, character)) for character in characters()]
    ahead = []
    for character, history in cast:
        started = time.perf_counter()
        read = server.warm(character.opening(model.context_window, MAX_TOKENS, history))
        ahead.append({"read": read, "seconds": time.perf_counter() - started})
    firsts = []
    for (character, history), warmed in zip(cast, ahead, strict=True):
        question = character.questions[0]["question"]
        messages = character.prompt(
            question, model.context_window, MAX_TOKENS, history, recalled(character, question)
        )
        firsts.append({**streamed(model, messages), **warmed})
    log("read ahead: first token " + ", ".join(f"{r['first_s']:.2f}" for r in firsts) + " s")
    server.close()
    return firsts


def measure(
    path: str, threads: int, questions: int, turns_each: int, batch_threads: int | None
) -> dict[str, Any]:
    """Everything for one model, in this process."""
    before = rss_mb("VmRSS")
    server = LocalModelServer(
        path, n_threads=threads, context=CONTEXT, seed=42, n_threads_batch=batch_threads
    )
    loaded = rss_mb("VmRSS")
    model = server.client()
    turns = load(model.context_window, MAX_TOKENS)

    streamed(model, turns[0].messages[-1:])  # warm-up: first use allocates buffers
    probes = [
        reply for character in characters() for reply in conversation(model, character, turns_each)
    ]

    results = []
    for number, turn in enumerate(interleaved(turns, questions), 1):
        reply = streamed(model, turn.messages)
        checks = score(turn, reply["text"], reply["finish_reason"])
        results.append(
            {
                **reply,
                "checks": checks,
                "language": turn.language,
                "question": turn.question,
                "kind": turn.kind,
                "key": list(turn.key),
            }
        )
        log(f"{number} {turn.question} -> {'ok' if all(checks.values()) else 'fail'}")
    server.close()
    return {
        "model": server.model,
        "read_ahead": read_ahead(path, threads, batch_threads),
        "file_mb": Path(path).stat().st_size / 1e6,
        "load_s": server.load_s,
        "rss_before_mb": before,
        "rss_loaded_mb": loaded,
        "rss_peak_mb": rss_mb("VmHWM"),
        "probes": probes,
        "replies": results,
        "load": machine_load(),
    }


def tokens_per_s(replies: Sequence[dict[str, Any]], clock: str = "") -> float:
    """Generated tokens after the first over the time after the first; `clock="cpu_"` counts
    the process's CPU seconds instead, which other work on the machine does not inflate."""
    counted = [r for r in replies if r["completion_tokens"] > 1]
    generated = sum(r["completion_tokens"] - 1 for r in counted)
    seconds = sum(r[f"total_{clock}s"] - r[f"first_{clock}s"] for r in counted)
    return generated / seconds if seconds else 0.0


def share(replies: Sequence[dict[str, Any]], check: str | None = None) -> str:
    if not replies:
        return "-"
    passed = sum(
        all(r["checks"].values()) if check is None else r["checks"][check] for r in replies
    )
    return f"{passed}/{len(replies)} ({100 * passed / len(replies):.0f} %)"


def report(label: str, result: dict[str, Any]) -> None:
    replies, probes = result["replies"], result["probes"]
    speed, speed_cpu = (tokens_per_s([*replies, *probes], clock) for clock in ("", "cpu_"))
    turn_times = sorted(r["total_s"] for r in replies)
    p95 = turn_times[min(len(turn_times) - 1, round(0.95 * (len(turn_times) - 1)))]
    rows = [
        Row("model", f"{result['model']} ({result['file_mb']:.0f} MB file)"),
        Row("load", f"{result['load_s']:.2f} s"),
        Row(
            "resident memory",
            f"{result['rss_loaded_mb'] - result['rss_before_mb']:.0f} MB added by the load; "
            f"peak {result['rss_peak_mb']:.0f} MB (process before load "
            f"{result['rss_before_mb']:.0f} MB)",
        ),
        first_token("first token, first turn (cold)", [p for p in probes if p["turn"] == 0]),
        first_token("first token, later turns (warm)", [p for p in probes if p["turn"] > 0]),
        first_token("first token, first turn read ahead", result["read_ahead"]),
        Row(
            "reading ahead",
            f"{statistics.median(r['read'] for r in result['read_ahead']):.0f} tokens in "
            f"{statistics.median(r['seconds'] for r in result['read_ahead']):.2f} s p50 "
            "(in the background, after `alma serve` starts or an edit)",
        ),
        Row(
            "tokens/s",
            f"{speed:.1f}; {speed_cpu:.1f} per CPU-second (a core of its own)",
            f">= {MIN_TOKENS_PER_S:.0f}",
        ),
        Row(
            "turn time",
            f"{statistics.median(turn_times):.2f} s p50, {p95:.2f} s p95",
            f"p50 <= {MAX_TURN_S} s",
        ),
    ]
    for language in ("es", "en"):
        mine = [r for r in replies if r["language"] == language]
        rows.append(Row(f"all checks, {language}", share(mine), f">= {MIN_PASS:.0%}"))
    for check in CHECKS:
        asked = [r for r in replies if check != "key_fact" or r["key"]]
        per = [share([r for r in asked if r["language"] == lang], check) for lang in ("es", "en")]
        rows.append(Row(f"  {check}", f"es {per[0]}, en {per[1]}"))
    rows.append(Row("machine", result["load"]))
    print_table(f"{label}", rows)


def first_token(label: str, turns: Sequence[dict[str, Any]]) -> Row:
    """The time to the first token of `turns`, median, with their prompts' sizes."""
    if not turns:
        return Row(label, "-")
    first = statistics.median(t["first_s"] for t in turns)
    cpu = statistics.median(t["first_cpu_s"] for t in turns)
    sizes = [t["prompt_tokens"] for t in turns]
    return Row(
        label,
        f"{first:.2f} s p50 over {len(turns)}, {cpu:.2f} s of CPU (prompts of "
        f"{min(sizes)}-{max(sizes)} of the model's tokens)",
        f"<= {MAX_FIRST_TOKEN_S} s",
    )


def child(path: str, threads: int, questions: int, turns: int, batch: int | None) -> None:
    print(json.dumps(measure(path, threads, questions, turns, batch), ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", action="append", default=[], metavar="packaged|NAME|LABEL=FILE.gguf"
    )
    parser.add_argument("--threads", type=int, default=1, help="that generate the reply")
    parser.add_argument(
        "--batch-threads", type=int, help="that read the prompt (unset: every core, as alma)"
    )
    parser.add_argument("--questions", type=int, default=10, help="per character, of 10")
    parser.add_argument("--turns", type=int, default=4, help="per conversation, of 10")
    parser.add_argument("--quick", action="store_true", help="--questions 2 --turns 2")
    parser.add_argument("--replies", type=Path, help="write each setting's replies here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a GGUF file: measure it, print JSON
    args = parser.parse_args()
    questions, turns = (2, 2) if args.quick else (args.questions, args.turns)
    if not (1 <= questions <= 10 and 1 <= turns <= 10):
        parser.error("--questions and --turns are between 1 and 10")
    if args.child:
        child(args.child, args.threads, questions, turns, args.batch_threads)
        return

    settings = []
    for item in args.model or ["packaged"]:
        label, _, path = item.partition("=")
        if item == "packaged":
            label, path = "smollm2-135m (packaged)", str(packaged_model_path())
        elif item in LOCAL_MODELS:  # joined into the model cache on first use
            path = str(model_file(item, default_cache()))
        elif not path:
            names = ", ".join(LOCAL_MODELS)
            parser.error(f"--model wants packaged, {names} or LABEL=FILE.gguf, not {item!r}")
        settings.append((label, path))
    print(f"machine at start: {machine_load()}")
    for label, path in settings:
        log(f"{label}: {path}")
        command = [sys.executable, __file__, "--child", path, "--threads", str(args.threads)]
        if args.batch_threads:
            command += ["--batch-threads", str(args.batch_threads)]
        done = subprocess.run(
            [*command, "--questions", str(questions), "--turns", str(turns)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"\n== {label} ==\nfailed (exit {done.returncode}): see the lines above")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if args.replies:
            args.replies.mkdir(parents=True, exist_ok=True)
            lines = (json.dumps(r, ensure_ascii=False) for r in result["replies"])
            (args.replies / f"{label.split()[0]}.jsonl").write_text("\n".join(lines) + "\n")
        batch = args.batch_threads or os.cpu_count()
        report(f"{label}, {args.threads} thread(s), {batch} reading the prompt", result)


if __name__ == "__main__":
    main()

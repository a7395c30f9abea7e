"""Drives alma's OpenAI-compatible routes with LangChain, litellm and llama-index, as their users
would, and prints what each call got as JSON: {step: {"ok": value} or {"error": message}}.

Run by tests/test_openai_clients.py in an environment of its own (the clients pin an older
`openai` than alma's; tests/openai-clients.txt), so it imports nothing of alma's:
`python tests/openai_clients.py BASE_URL KEY MODEL`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def langchain(base: str, key: str, model: str) -> dict[str, Callable[[], Any]]:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings
    from pydantic import BaseModel

    class Mood(BaseModel):
        mood: str
        intensity: int

    chat = ChatOpenAI(model=model, base_url=base, api_key=key, max_retries=0, timeout=60)

    def tools() -> Any:
        calling = chat.bind_tools([WEATHER])
        question = HumanMessage("[tool] ¿Qué tiempo hace en Lisboa?")
        asked = calling.invoke([question])
        [call] = asked.tool_calls
        result = ToolMessage(content="sunny, 24 °C", tool_call_id=call["id"])
        answered = calling.invoke([question, asked, result])
        return {"call": [call["name"], call["args"]], "answer": answered.content}

    responses = ChatOpenAI(
        model=model,
        base_url=base,
        api_key=key,
        max_retries=0,
        timeout=60,
        use_responses_api=True,
    )

    def responses_tools() -> Any:
        calling = responses.bind_tools([WEATHER])
        question = HumanMessage("[tool] ¿Qué tiempo hace en Lisboa?")
        asked = calling.invoke([question])
        [call] = asked.tool_calls
        result = ToolMessage(content="sunny, 24 °C", tool_call_id=call["id"])
        answered = calling.invoke([question, asked, result])
        return {"call": [call["name"], call["args"]], "answer": answered.text}

    def previous_response() -> Any:
        # LangChain sends the messages after the last response and that response's id: what
        # it holds of the earlier turn (here not what was said) never reaches alma.
        going_on = responses.model_copy(update={"use_previous_response_id": True})
        first = going_on.invoke("Mi gato se llama Tizón")
        held = [
            HumanMessage("(no lo que dije)"),
            AIMessage("(no lo que dijo)", response_metadata=first.response_metadata),
            HumanMessage("¿Cómo se llama mi gato?"),
        ]
        return going_on.invoke(held).text

    return {
        "plain": lambda: chat.invoke("Hola, Rosa").content,
        "streaming": lambda: "".join(str(c.content) for c in chat.stream("¿Sigues ahí?")),
        "async": lambda: asyncio.run(chat.ainvoke("¿Me oyes?")).content,
        "history": lambda: (
            chat.invoke(
                [HumanMessage("Hola"), AIMessage("Sí: Hola"), HumanMessage("¿Y Lucía?")]
            ).content
        ),
        "content parts": lambda: (
            chat.invoke(
                [HumanMessage(content=[{"type": "text", "text": "Partes de texto"}])]
            ).content
        ),
        "sampling": lambda: (
            ChatOpenAI(
                model=model,
                base_url=base,
                api_key=key,
                max_retries=0,
                max_tokens=8192,
                top_p=0.5,
                seed=3,
                stop=["\nUser:"],
            )
            .invoke("Con muestreo")
            .content
        ),
        "prefill": lambda: (
            chat.invoke([HumanMessage("Cuéntame de Lisboa"), AIMessage("Ah, Lisboa,")]).content
        ),
        "tools": tools,
        "structured output": lambda: (
            chat.with_structured_output(Mood).invoke("[json] ¿Cómo te sientes?").model_dump()
        ),
        "responses: plain": lambda: responses.invoke("Hola, Rosa").text,
        "responses: streaming": lambda: "".join(c.text for c in responses.stream("¿Sigues ahí?")),
        "responses: history": lambda: (
            responses.invoke(
                [HumanMessage("Hola"), AIMessage("Sí: Hola"), HumanMessage("¿Y Lucía?")]
            ).text
        ),
        "responses: previous response": previous_response,
        "responses: tools": responses_tools,
        "embeddings": lambda: len(
            OpenAIEmbeddings(
                model="any", base_url=base, api_key=key, check_embedding_ctx_length=False
            ).embed_query("hola")
        ),
    }


def litellm_steps(base: str, key: str, model: str) -> dict[str, Callable[[], Any]]:
    import litellm

    where = {"api_base": base, "api_key": key}
    name = f"openai/{model}"

    def say(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    def streamed() -> str:
        chunks = litellm.completion(model=name, messages=say("¿Sigues ahí?"), stream=True, **where)
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    def tools() -> Any:
        asked = litellm.completion(
            model=name, messages=say("[tool] ¿Y en Oaxaca?"), tools=[WEATHER], **where
        )
        call = asked.choices[0].message.tool_calls[0]
        return [call.function.name, json.loads(call.function.arguments)]

    return {
        "plain": lambda: (
            litellm.completion(model=name, messages=say("Hola, Rosa"), **where)
            .choices[0]
            .message.content
        ),
        "streaming": streamed,
        "async": lambda: (
            asyncio.run(litellm.acompletion(model=name, messages=say("¿Me oyes?"), **where))
            .choices[0]
            .message.content
        ),
        "sampling": lambda: (
            litellm.completion(
                model=name,
                messages=say("Con muestreo"),
                top_p=0.5,
                seed=3,
                max_tokens=8192,
                **where,
            )
            .choices[0]
            .message.content
        ),
        "tools": tools,
        "embeddings": lambda: len(
            litellm.embedding(model="openai/any", input=["hola"], **where).data[0]["embedding"]
        ),
        "completions": lambda: (
            litellm.text_completion(
                model=f"text-completion-openai/{model}", prompt="Un texto", **where
            )
            .choices[0]
            .text
        ),
    }


def llama_index(base: str, key: str, model: str) -> dict[str, Callable[[], Any]]:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    def llm(chat: bool) -> Any:
        return OpenAILike(
            model=model,
            api_base=base,
            api_key=key,
            is_chat_model=chat,
            context_window=16000,
            max_retries=0,
        )

    return {
        "completions": lambda: llm(False).complete("¿Quién eres?").text,
        "streaming": lambda: "".join(r.delta or "" for r in llm(False).stream_complete("Cuenta")),
        "plain": lambda: (
            llm(True).chat([ChatMessage(role="user", content="Hola, Rosa")]).message.content
        ),
        "async": lambda: asyncio.run(llm(False).acomplete("¿Me oyes?")).text,
    }


def main() -> None:
    base, key, model = sys.argv[1:4]
    results: dict[str, dict[str, Any]] = {}
    for client, steps in (
        ("langchain", langchain),
        ("litellm", litellm_steps),
        ("llama-index", llama_index),
    ):
        try:
            made = steps(base, key, model)
        except Exception as error:  # the client is not installed or does not load
            results[client] = {"error": f"{type(error).__name__}: {error}"}
            continue
        for step, call in made.items():
            try:
                results[f"{client}: {step}"] = {"ok": call()}
            except Exception as error:
                results[f"{client}: {step}"] = {"error": f"{type(error).__name__}: {error}"[:500]}
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main()

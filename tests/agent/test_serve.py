"""``pllm serve``: real clients (the official ``openai`` package, LangChain's ``ChatOpenAI``) against a real server on
loopback, over the real model and memory; API keys on every route; bad input refused with nothing stored."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent import Settings, build_stack
from agent.serve import KeyStore, create_app
from editing import GenerationSettings
from memory import ManualClock, utc

SHORT = GenerationSettings(max_new_tokens=12, repetition_penalty=1.15)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Served":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start in 30 s"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_cache_dir: Path, local_model, embedder) -> Iterator[tuple[Served, dict[str, str], object]]:
    """A real uvicorn server on loopback over a real stack, keys required: one key for ana, one for ben, an admin."""
    home = tmp_path_factory.mktemp("serve-home")
    stack = build_stack(Settings(home=home, model_cache=model_cache_dir, model_updates=False),
                        clock=ManualClock(utc(2026, 3, 2, 9)), local=local_model, embedder=embedder, generation=SHORT)
    keys = KeyStore.under(home)
    secrets = {"ana": keys.create(["ana"]).secret, "ben": keys.create(["ben"]).secret,
               "admin": keys.create(["*"], name="ops").secret}
    local_model.enable_batching(window_ms=25)
    try:
        with Served(create_app(stack, keys=keys, require_keys=True), _free_port()) as server:
            yield server, secrets, stack
    finally:
        local_model.enable_batching(0)
        stack.close()
        keys.close()


def _h(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_openai_client_streams_a_personal_reply_and_the_fact_is_in_that_users_memory_only(served) -> None:
    from openai import OpenAI, PermissionDeniedError

    server, secrets, _stack = served
    ana = OpenAI(base_url=f"{server.url}/v1", api_key=secrets["ana"], max_retries=0)
    stream = ana.chat.completions.create(model="pllm", user="ana", stream=True,
                                         messages=[{"role": "user", "content": "I live in Lisbon."}])
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([c for c in chunks if c]) > 1 and "".join(chunks).strip()  # streamed in pieces

    facts = httpx.get(f"{server.url}/v1/users/ana/facts", headers=_h(secrets["ana"])).json()["facts"]
    assert [(f["relation"], f["object"]) for f in facts] == [("lives_in", "Lisbon")]
    refused = httpx.get(f"{server.url}/v1/users/ana/facts", headers=_h(secrets["ben"]))
    assert refused.status_code == 403 and "may not act for user 'ana'" in refused.json()["error"]["message"]
    # ben's key cannot chat as ana either, through the official client
    ben = OpenAI(base_url=f"{server.url}/v1", api_key=secrets["ben"], max_retries=0)
    with pytest.raises(PermissionDeniedError):
        ben.chat.completions.create(model="pllm", user="ana", messages=[{"role": "user", "content": "Where do I live?"}])
    assert httpx.get(f"{server.url}/v1/users", headers=_h(secrets["ben"])).json()["users"] == []
    assert "ana" in httpx.get(f"{server.url}/v1/users", headers=_h(secrets["admin"])).json()["users"]


def test_openai_client_non_streaming_reply_has_usage_and_the_turns_changes(served) -> None:
    from openai import OpenAI

    server, secrets, _stack = served
    client = OpenAI(base_url=f"{server.url}/v1", api_key=secrets["admin"], max_retries=0)
    assert [m.id for m in client.models.list()] == [_stack.local.model_id]
    done = client.chat.completions.create(model="pllm", user="cleo", max_tokens=8,
                                          messages=[{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "My favorite food is ramen."}])
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content
    assert 0 < done.usage.completion_tokens <= 8 and done.usage.prompt_tokens > 10
    pllm = done.model_extra["pllm"]
    assert pllm["user"] == "cleo" and any("ramen" in e["text"] for e in pllm["events"])


def test_langchain_chat_openai_works_unchanged(served) -> None:
    from langchain_openai import ChatOpenAI

    server, secrets, _stack = served
    llm = ChatOpenAI(base_url=f"{server.url}/v1", api_key=secrets["admin"], model="pllm", max_retries=0,
                     default_headers={"X-Pllm-User": "dev", "X-Pllm-Session": "lc"})
    reply = llm.invoke("I work as a nurse.")
    assert isinstance(reply.content, str) and reply.content.strip()
    pieces = [c.content for c in llm.stream("I have a dog named Rex.")]
    assert len([p for p in pieces if p]) > 1
    history = httpx.get(f"{server.url}/v1/users/dev/facts", headers=_h(secrets["admin"])).json()["facts"]
    assert {"nurse", "Rex"} <= {f["object"] for f in history} or any("nurse" in f["object"] for f in history)


def test_memory_rest_add_list_search_export_forget_import(served) -> None:
    server, secrets, _stack = served
    h = _h(secrets["admin"])
    url = f"{server.url}/v1/users/erin"
    added = httpx.post(f"{url}/turns", headers=h, json={"text": "I live in Oslo.", "at": "2026-01-10T09:00:00Z"})
    assert added.status_code == 201 and added.json()["events"][0]["text"] == "+ lives in: Oslo"
    moved = httpx.post(f"{url}/turns", headers=h, json={"text": "I moved to Bergen.", "at": "2026-02-10T09:00:00Z"})
    assert moved.json()["events"][0]["kind"] == "FactSuperseded"

    current = httpx.get(f"{url}/facts", headers=h).json()["facts"]
    assert [f["object"] for f in current] == ["Bergen"]
    history = {f["object"]: f for f in httpx.get(f"{url}/facts?view=history", headers=h).json()["facts"]}
    assert history["Oslo"]["status"] == "superseded" and history["Oslo"]["valid_to"].startswith("2026-02-10")
    then = httpx.get(f"{url}/facts", headers=h, params={"view": "as_of", "at": "2026-01-20T00:00:00Z"}).json()
    assert [f["object"] for f in then["facts"]] == ["Oslo"]
    found = httpx.get(f"{url}/search", headers=h, params={"q": "where do I live now?"}).json()
    assert found["facts"][0]["object"] == "Bergen" and found["episodes"]
    events = httpx.get(f"{url}/events", headers=h).json()["events"]
    assert [e["kind"] for e in events][:2] == ["FactAdded", "FactSuperseded"]
    graph = httpx.get(f"{url}/graph", headers=h).json()
    assert {(e["target"], e["current"]) for e in graph["edges"]} == {("Oslo", False), ("Bergen", True)}
    model = httpx.get(f"{url}/model", headers=h).json()
    assert set(model) >= {"edits", "adapters", "jobs"}

    document = httpx.get(f"{url}/export", headers=h).json()
    assert document["format"] == "pllm.user.export"
    forgotten = httpx.delete(url, headers=h)
    assert forgotten.status_code == 200 and forgotten.json()["forgotten"]
    gone = httpx.get(f"{url}/search", headers=h, params={"q": "where do I live?"})
    assert gone.status_code == 404 and "nothing is stored" in gone.json()["error"]["message"]
    assert httpx.delete(url, headers=h).status_code == 404
    back = httpx.post(f"{url}/import", headers=h, json=document)
    assert back.status_code == 201
    assert [f["object"] for f in httpx.get(f"{url}/facts", headers=h).json()["facts"]] == ["Bergen"]
    again = httpx.post(f"{url}/import", headers=h, json=document)
    assert again.status_code == 409 and "already" in again.json()["error"]["message"], again.text


def _user_routes(app) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            out.append((method, route.path))
    return out


def test_every_route_refuses_no_key_a_wrong_key_and_another_users_key(served) -> None:
    server, secrets, stack = served
    h = _h(secrets["admin"])
    httpx.post(f"{server.url}/v1/users/ana/turns", headers=h, json={"text": "I have a cat named Miso."})
    before = httpx.get(f"{server.url}/v1/users/ana/export", headers=h).json()
    app = server.server.config.app
    routes = _user_routes(app)
    user_routes = [(m, p) for m, p in routes if "{user_id}" in p]
    assert len(user_routes) >= 14  # every memory / model route is in the matrix
    bodies = {"turns": {"text": "I live in Rome."}, "chat": {"text": "I live in Rome."}, "feedback": {"value": 1},
              "import": before}
    open_paths = {"/", "/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/static"}
    checked = 0
    for method, path in routes:
        if path in open_paths:
            continue
        url = server.url + path.replace("{user_id}", "ana") + ("?q=pets" if path.endswith("/search") else "")
        body = bodies.get(path.rsplit("/", 1)[-1])
        if path == "/v1/chat/completions":
            body = {"model": "pllm", "user": "ana", "messages": [{"role": "user", "content": "I live in Rome."}]}
        for headers, status in (({}, 401), (_h("pllm-00000000-nope"), 401), ({"X-API-Key": "garbage"}, 401),
                                (_h(secrets["ben"]), 403)):
            if status == 403 and "{user_id}" not in path and path != "/v1/chat/completions":
                continue  # /v1/models and /v1/users: any live key may call them (the listing is scoped)
            r = httpx.request(method, url, headers=headers, json=body if method in ("POST", "PUT") else None)
            assert r.status_code == status, (method, path, headers, r.text)
            assert r.json()["error"]["message"]
            checked += 1
    assert checked >= 3 * len([r for r in routes if r[1] not in open_paths])
    after = httpx.get(f"{server.url}/v1/users/ana/export", headers=h).json()
    assert _content(after) == _content(before)  # nothing the refused requests carried was stored
    assert "Rome" not in str(after)


def _content(document: dict) -> dict:
    # what the user said and the threads; the model part's job rows change on their own (the worker runs them)
    return {name: {k: v for k, v in part.items() if k != "exported_at"} if isinstance(part, dict) else part
            for name, part in document["parts"].items() if name != "model"}


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"model": "pllm", "user": "ana", "messages": [{"role": "user", "content": "hi"}], "temprature": 0}', 422,
     "unknown field 'temprature'"),
    (b'{"model": "pllm", "user": "ana", "messages": [{"role": "user", "content": "I live in \\ud800 Rome."}]}', 400,
     "not valid Unicode"),
    (b'{"model": "pllm", "messages": [{"role": "user", "content": "I live in Rome."}]}', 400, "no pllm user"),
    (b'{"model": "pllm", "user": "ana", "n": 2, "messages": [{"role": "user", "content": "I live in Rome."}]}', 422,
     "n:"),
    (b'{"model": "pllm", "user": "ana bad", "messages": [{"role": "user", "content": "I live in Rome."}]}', 400,
     "is not valid"),
    (b'{"model": "pllm", "user": "ana", "messages": [{"role": "assistant", "content": "I live in Rome."}]}', 400,
     "no user message"),
])
def test_bad_chat_input_is_refused_with_a_message_and_nothing_is_stored(served, body, status, says) -> None:
    server, secrets, _stack = served
    h = {**_h(secrets["admin"]), "Content-Type": "application/json"}
    httpx.post(f"{server.url}/v1/users/ana/turns", headers=h, json={"text": "I have a cat named Miso."})
    before = httpx.get(f"{server.url}/v1/users/ana/export", headers=h).json()
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=h, content=body)
    assert r.status_code == status and says in r.json()["error"]["message"], r.text
    after = httpx.get(f"{server.url}/v1/users/ana/export", headers=h).json()
    assert _content(after) == _content(before) and "Rome" not in str(after)


def test_oversized_bodies_are_refused_before_they_are_read(served) -> None:
    server, secrets, _stack = served
    h = {**_h(secrets["admin"]), "Content-Type": "application/json"}
    big = b'{"text": "' + b"a" * 1_100_000 + b'"}'
    r = httpx.post(f"{server.url}/v1/users/ana/turns", headers=h, content=big)
    assert r.status_code == 413 and "over 1,000,000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(12):
            yield b"a" * 100_000

    r = httpx.post(f"{server.url}/v1/users/ana/turns", headers=h, content=chunks())
    assert r.status_code == 413
    long_turn = httpx.post(f"{server.url}/v1/users/ana/turns", headers=h, json={"text": "word " * 5000})
    assert long_turn.status_code == 400 and "at most" in long_turn.json()["error"]["message"]


def test_keys_are_stored_hashed_and_revocation_takes_effect(served) -> None:
    server, _secrets, stack = served
    keys = KeyStore.under(stack.settings.home)
    made = keys.create(["fay"], name="temp")
    raw = (stack.settings.home / "keys.sqlite").read_bytes()
    # The random part is url-safe base64 and may itself contain "-": split off the prefix and key id only.
    assert made.secret.encode() not in raw and made.secret.split("-", 2)[2].encode() not in raw
    assert httpx.get(f"{server.url}/v1/users/fay/facts", headers=_h(made.secret)).status_code == 200
    assert keys.revoke(made.key.key_id)
    assert httpx.get(f"{server.url}/v1/users/fay/facts", headers=_h(made.secret)).status_code == 401
    keys.close()


def test_a_key_whose_random_part_holds_dashes_verifies_and_a_tampered_one_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # token_urlsafe draws from A-Z a-z 0-9 - _, so about half of all keys hold a "-" after the key id; pin one.
    import agent.serve.keys as keys_module
    monkeypatch.setattr(keys_module.secrets, "token_urlsafe", lambda n: "-ab-cd-" + "x" * 36)
    keys = KeyStore.under(tmp_path)
    made = keys.create(["fay"], name="dashes")
    assert made.secret.endswith("-ab-cd-" + "x" * 36)
    assert keys.verify(made.secret) == made.key
    assert keys.verify(made.secret[:-1] + "y") is None
    assert keys.verify(made.secret.replace("-ab-", "-ab", 1)) is None
    keys.close()


@pytest.mark.slow
def test_pllm_serve_command_serves_the_openai_api_with_keys(tmp_path: Path, model_cache_dir: Path) -> None:
    """The real `pllm serve` process: refuses to start on 0.0.0.0 without keys; serves with one."""
    from openai import AuthenticationError, OpenAI

    env = {**os.environ, "PLLM_MODEL_CACHE": str(model_cache_dir), "PLLM_HOME": str(tmp_path / "home")}
    pllm = [sys.executable, "-m", "agent.cli"]
    refused = subprocess.run([*pllm, "serve", "--host", "0.0.0.0"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "pllm keys create" in refused.stdout + refused.stderr
    made = subprocess.run([*pllm, "keys", "create", "--user", "gus"], env=env, capture_output=True, text=True,
                          timeout=60)
    secret = made.stdout.strip().splitlines()[-1]
    port = _free_port()
    proc = subprocess.Popen([*pllm, "serve", "--port", str(port), "--require-keys", "--max-new-tokens", "10"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pllm serve did not answer /health in 120 s"
            time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=secret, max_retries=0)
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="pllm", user="gus", stream=True, messages=[{"role": "user", "content": "I live in Porto."}])
            if c.choices)
        assert text.strip()
        facts = httpx.get(f"http://127.0.0.1:{port}/v1/users/gus/facts", headers=_h(secret)).json()["facts"]
        assert [f["object"] for f in facts] == ["Porto"]
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_served_through_an_engine_process_the_reply_streams_and_the_turn_is_remembered(
        tmp_path: Path, model_cache_dir: Path, embedder) -> None:
    """`pllm serve --engine-process`: the web server's process hands decoding to the engine process; the official
    client streams a reply for the user and the turn lands in that user's memory."""
    from openai import OpenAI

    from editing import LocalModel

    home = tmp_path / "home"
    settings = Settings(home=home, model_cache=model_cache_dir, model_updates=False)
    stack = build_stack(settings, local=LocalModel.load(settings.runtime_config()), embedder=embedder,
                        generation=SHORT)
    try:
        engine = stack.local.enable_engine_process(window_ms=25, max_batch=4)
        with Served(create_app(stack), _free_port()) as server:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
            chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="pllm", user="eve", stream=True, messages=[{"role": "user", "content": "I live in Oslo."}])
                if c.choices]
            assert len([c for c in chunks if c]) > 1
            assert engine.wait_idle(30) and sum(engine.batch_sizes) >= 1  # it was decoded over there
            facts = httpx.get(f"{server.url}/v1/users/eve/facts").json()["facts"]
            assert [f["object"] for f in facts] == ["Oslo"]
            said = [e.text for e in stack.memory.episodes("eve")]
            assert "I live in Oslo." in said and "".join(chunks).strip() in said
    finally:
        stack.close()
    assert not engine.alive


def test_pllm_serve_refuses_engine_cpus_without_an_engine_process(tmp_path: Path) -> None:
    env = {**os.environ, "PLLM_HOME": str(tmp_path / "home")}
    refused = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--engine-cpus", "0"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--engine-cpus goes with --engine-process" in refused.stdout + refused.stderr

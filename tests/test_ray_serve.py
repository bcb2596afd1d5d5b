"""The Ray Serve deployment (optional: skipped without `ray[serve]`): two replicas of the
server on a local Ray instance, loopback only, answering the OpenAI routes as `gpt-rs serve`
does. Run it where Ray is installed:
`PYTHONPATH=python <ray venv>/bin/python -m pytest tests/test_ray_serve.py`."""

import socket
import time

import chat_cases as cc
import pytest

import gpt_rs

serve = pytest.importorskip("ray.serve")
ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cc.make_chat_model(tmp_path_factory.mktemp("ray") / "tiny-qwen")


def test_two_replicas_serve_the_openai_routes(model_dir):
    from gpt_rs.ray_serve import deployment

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(str(model_dir), replicas=2, threads=1), route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == ["tiny-qwen"]
        model = gpt_rs.load_model(model_dir)
        msgs = [{"role": "user", "content": "hello"}]
        want = model.chat(msgs, max_new_tokens=12, temperature=0)
        t0 = time.monotonic()
        for _ in range(8):  # spread over both replicas by the proxy
            r = client.chat.completions.create(
                model="tiny-qwen", messages=msgs, max_tokens=12, temperature=0
            )
            assert r.choices[0].message.content == want
        assert time.monotonic() - t0 < 120
        status = serve.status().applications["default"].deployments
        assert sum(d.replica_states.get("RUNNING", 0) for d in status.values()) == 2
    finally:
        serve.shutdown()
        ray.shutdown()

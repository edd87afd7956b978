"""AppTest smoke tests: every view of the dashboard renders on a real run, and user data stays text.

AppTest has no browser: fragments' timers never fire and charts are "unknown" elements whose Vega-Lite spec we
read from the proto. The live behaviour is tested in a real browser (test_dashboard_browser.py).
"""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")
from streamlit.testing.v1 import AppTest  # noqa: E402

from babysit import hooks  # noqa: E402
from babysit.monitor.dashboard_cli import APP  # noqa: E402
from benchmarks.synthetic import write_run  # noqa: E402

NAN_RUN = "nan<b>x</b>"
# a rule the dashboard's own diagnosis does not reproduce: the recorded line is what it shows
NAN_FINDING = {"rule": "custom_nan_check", "title": "Loss is **NaN** <script>alert(1)</script>", "severity": "critical",
               "step": 150, "epoch": None, "message": "loss became NaN <img src=x onerror=alert(1)>",
               "evidence": {"lr": 0.5}, "fix": ["lower the [learning rate](http://evil.example)"]}


def _train_real_run(path) -> None:
    """A real (tiny) training run through hooks.Run: layer stats, snapshots, epochs, learning rate."""
    torch.manual_seed(0)
    x = torch.randn(256, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with hooks.Run(path, num_classes=4, config={"lr": 0.05, "reg": 1e-4, "model": "tiny"}) as run:
        run.watch(model, opt, every=5, snapshot_every=20, input_shape=(1, 8, 8))
        for epoch in range(3):
            for i in range(0, 256, 16):
                loss = torch.nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean().item()
            run.epoch(train_loss=loss.item(), train_acc=acc, val_loss=loss.item() + 0.1, val_acc=acc - 0.05 * epoch)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _train_real_run(root / "real")
    write_run(root / NAN_RUN, steps=300, epochs=3, nan_from=150, state="stopped", findings=[NAN_FINDING],
              config={"lr": 0.5, "note": "<script>alert(1)</script>"}, seed=1)
    return root


def _app(root, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("BABYSIT_ROOT", str(root))
    at = AppTest.from_file(str(APP), default_timeout=90)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def _specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]


def _datasets(spec: dict) -> set[str]:
    return {d.get("name") for d in spec.get("data", [])} | set(spec.get("datasets", {}))


def _layer_names(spec: dict) -> set:
    names = set()
    for layer in spec.get("layer", []):
        names |= _layer_names(layer)
        if isinstance(layer.get("data"), dict):
            names.add(layer["data"].get("name"))
    return names


def test_the_run_view_shows_every_panel_of_a_real_run(root, monkeypatch):
    at = _app(root, monkeypatch, run="real")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Step"] == "48" and metrics["Epoch"] == "3"
    assert metrics["Val acc (best)"].endswith("%")
    specs = _specs(at)
    layer_sets = [_layer_names(s) for s in specs]
    assert any({"loss", "refs"} <= names for names in layer_sets)  # loss with reference levels
    assert any("gap" in names for names in layer_sets)  # accuracy with its gap
    assert any(s.get("mark", {}).get("type") == "line" and s["encoding"]["y"]["field"] == "lr" for s in specs)
    titles = [s.get("title", {}).get("text") for s in specs if "facet" in s]
    assert "Gradient norm" in titles and any(t.startswith("Update / weight ratio") for t in titles)
    assert any(t.startswith("Dead (ReLU)") for t in titles)
    assert len(at.get("image")) == 2  # the first layer's filters: at initialization and now


@pytest.mark.parametrize("view", ["Runs", "Compare", "Search"])
def test_the_other_views_render(root, monkeypatch, view):
    at = _app(root, monkeypatch, view=view, run="real")
    assert not at.exception
    if view == "Runs":
        table = at.dataframe[0].value
        assert set(table["run"]) == {"real", NAN_RUN}
        assert table.set_index("run").loc[NAN_RUN, "worst finding"].startswith("critical: ")
    elif view == "Compare":
        specs = _specs(at)
        assert {s["encoding"]["color"]["field"] for s in specs} == {"run"}
    else:
        specs = _specs(at)
        assert specs and all(s["encoding"]["x"]["scale"]["type"] == "log" for s in specs)
        assert [p["name"] for p in specs[0]["params"]] == ["pick"]


def test_user_strings_are_shown_as_text_never_as_html_or_markdown(root, monkeypatch):
    at = _app(root, monkeypatch, run=NAN_RUN)
    assert not at.exception
    rendered = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error]
    for text in rendered:
        assert not re.search(r"(?<!\\)[<>]", text), text  # every angle bracket escaped: no HTML
        assert "](http" not in text, text  # a link in a fix cannot become a live link
    assert any("nan\\<b\\>x\\</b\\>" in t for t in rendered)  # the run name, escaped
    assert "loss became NaN <img src=x onerror=alert(1)>" in [t.value for t in at.text]  # verbatim, as text
    # The only HTML on the page is our own constant stylesheet.
    assert [h.proto.body.strip()[:7] for h in at.get("html")] == ["<style>"]


def test_a_run_path_from_the_url_outside_the_root_is_refused(root, monkeypatch):
    at = _app(root, monkeypatch, run="../../etc")
    assert not at.exception
    assert any("Refused" in e.value for e in at.error)
    assert at.sidebar.selectbox[0].value in {"real", NAN_RUN}


def test_show_on_charts_zooms_the_loss_to_the_findings_step(root, monkeypatch):
    at = _app(root, monkeypatch, run=NAN_RUN)
    show = [b for b in at.button if b.key and b.key.startswith("show-nonfinite_loss")]
    assert show
    at = show[0].click().run()
    assert not at.exception
    loss = next(s for s in _specs(at) if "marker" in _layer_names(s))
    lo, hi = loss["layer"][0]["encoding"]["x"]["scale"]["domain"]
    assert lo < 150 < hi and hi - lo < 300
    assert any("Zoomed to step 150" in c.value for c in at.caption)

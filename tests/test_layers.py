"""The package layers (compiler/layers.py): every import points down, and the check would see
one that did not."""

from compiler import layers


def test_every_import_points_down():
    assert layers.upward() == []


def test_imports_sit_at_the_top_outside_the_cli():
    assert layers.deferred() == []


def test_the_graph_sees_the_known_arrows():
    arrows = layers.graph()
    for arrow in [("hw", "core"), ("boards", "hw"), ("sim", "boards"), ("compiler", "boards"),
                  ("compiler", "sim")]:
        assert arrow in arrows, f"{arrow} is missing from {sorted(arrows)}"
    assert not any(a == "core" for a, _ in arrows), "core imports nothing of ours"


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    rigged = tmp_path / "hw"
    rigged.mkdir()
    (rigged / "__init__.py").write_text("")
    (rigged / "bad.py").write_text("def f():\n    from compiler import build\n")
    for name in ("core", "boards", "sim", "compiler"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(layers, "_ROOT", tmp_path)
    assert layers.upward() == ["hw/bad.py:2 (in a function): hw -> compiler"]
    assert layers.deferred() == ["hw/bad.py:2: compiler"]
    assert layers.main() == 1


def test_relative_imports_resolve(tmp_path, monkeypatch):
    pkg = tmp_path / "boards" / "link"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("from . import protocol\nfrom ..fit import y\n")
    monkeypatch.setattr(layers, "_ROOT", tmp_path)
    assert [name for name, _, _ in layers.imports(pkg / "x.py")] == ["boards.link", "boards.fit"]

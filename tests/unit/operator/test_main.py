"""`limedb-operator` refuses to start without knowing which namespaces it may watch."""

import pytest
from limedb_operator.main import main


def test_operator_requires_a_namespace_or_all_namespaces(monkeypatch, capsys):
    monkeypatch.delenv("WATCH_NAMESPACE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "--namespace" in capsys.readouterr().err

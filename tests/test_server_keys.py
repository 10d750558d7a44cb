"""API keys (memsdk keys create/list/revoke) on a real SQLite database."""

from __future__ import annotations

import json

from memsdk.cli import main
from memsdk.stores.keys import KeyStore


def test_keys_create_list_revoke_authenticate(tmp_path, capsys):
    db = tmp_path / "memory.db"
    url = f"sqlite:///{db}"
    args = ["--memory", str(tmp_path), "--database-url", url]

    assert main(["keys", "create", *args, "--tenant", "acme", "--user", "u1"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("msk_") and "shown once" in out.err
    assert main(["keys", "create", *args, "--tenant", "beta", "--read-only"]) == 0
    reader = capsys.readouterr().out.strip()

    # Only the hash is stored: the secret appears nowhere in the database files.
    secret = key.rsplit("_", 1)[1].encode()
    for path in tmp_path.iterdir():
        assert secret not in path.read_bytes(), path

    store = KeyStore(url)
    try:
        record = store.authenticate(key)
        assert record is not None and record.scope == ("acme", "u1", "", "")
        assert not record.read_only
        assert store.authenticate(reader).read_only
        assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert store.authenticate("msk_000000000000_" + "x" * 43) is None
        assert store.authenticate("Bearer nonsense") is None

        assert main(["keys", "list", *args, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [k["scope"]["tenant"] for k in listed] == ["acme", "beta"]
        assert key not in json.dumps(listed)

        assert main(["keys", "revoke", record.key_id, *args]) == 0
        assert f"revoked key {record.key_id}" in capsys.readouterr().out
        assert store.authenticate(key) is None  # revoked keys are refused
        assert store.authenticate(reader) is not None
        assert main(["keys", "list", *args]) == 0
        assert "revoked" in capsys.readouterr().out

        assert main(["keys", "revoke", "0123456789ab", *args]) == 2
        assert "no key 0123456789ab" in capsys.readouterr().err
    finally:
        store.close()


def test_keys_need_an_existing_memory(tmp_path, capsys):
    assert main(["keys", "list", "--memory", str(tmp_path / "nowhere")]) == 2
    assert "holds no memory" in capsys.readouterr().err

"""The cluster secret (issue 19): AES-256-GCM sealing of DKIM keys, the
`[cluster] secret_file` it comes from, and the clear errors of a missing,
malformed or wrong secret — at the box, in the config, at a node's start."""

import base64
import os

import pytest

from mta.cluster.secrets import SecretBox, SecretError, WrongSecret, load_secret, new_secret
from mta.config import parse_config
from mta.core import ConfigError
from mta.runtime.daemon import Daemon
from mta.runtime.startup import StartupError
from tests.support.cluster import cluster_text, cluster_world

PEM = (b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIH0dkimkeybytes\n"
       b"-----END PRIVATE KEY-----\n")


def test_seal_opens_only_with_its_key_and_place():
    box = SecretBox(os.urandom(32))
    sealed = box.seal(PEM, "dkim:a.test:s1")
    assert PEM not in sealed and b"PRIVATE KEY" not in sealed
    assert box.seal(PEM, "dkim:a.test:s1") != sealed            # a fresh nonce each time
    assert box.open(box.key_id, sealed, "dkim:a.test:s1") == PEM
    with pytest.raises(SecretError, match="does not authenticate"):
        box.open(box.key_id, sealed, "dkim:b.test:s1")           # moved to another row
    damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecretError, match="does not authenticate"):
        box.open(box.key_id, damaged, "dkim:a.test:s1")
    other = SecretBox(os.urandom(32))
    with pytest.raises(WrongSecret) as err:
        other.open(box.key_id, sealed, "dkim:a.test:s1")
    text = str(err.value)
    assert box.key_id in text and other.key_id in text and "same secret file" in text
    assert len(box.key_id) == 16 and box.key_id not in repr(base64.b64encode(os.urandom(1)))


@pytest.mark.parametrize("encode", [
    lambda k: base64.b64encode(k).decode() + "\n",
    lambda k: base64.urlsafe_b64encode(k).decode().rstrip("="),
    lambda k: k.hex() + "\n",
    lambda k: k.hex().upper(),
])
def test_load_secret_reads_base64_or_hex(tmp_path, encode):
    key = os.urandom(32)
    path = tmp_path / "secret"
    path.write_text(encode(key))
    assert load_secret(path).key_id == SecretBox(key).key_id


def test_load_secret_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SecretError, match=f"cluster.secret_file {missing}: no such file"):
        load_secret(missing)
    with pytest.raises(SecretError, match="is a directory"):
        load_secret(tmp_path)
    short = tmp_path / "short"
    short.write_text(base64.b64encode(os.urandom(16)).decode())
    with pytest.raises(SecretError, match=f"{short}: not a 32-byte key"):
        load_secret(short)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\xff\xfe not a key")
    with pytest.raises(SecretError, match="not a 32-byte key"):
        load_secret(junk)
    if os.getuid() != 0:
        locked = tmp_path / "locked"
        locked.write_text(new_secret())
        locked.chmod(0)
        with pytest.raises(SecretError, match="permission denied"):
            load_secret(locked)


def test_new_secret_is_a_fresh_32_byte_key():
    a, b = new_secret(), new_secret()
    assert a != b and len(base64.b64decode(a)) == 32


def test_a_cluster_needs_a_secret_file(tmp_path):
    text = cluster_text(tmp_path / "s", "postgresql://db.test/mta", "redis://r.test/0", "A", 2525)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("secret_file"))
    with pytest.raises(ConfigError, match="cluster.secret_file: required in a cluster"):
        parse_config(text, "test")
    single = text.split("[cluster]")[0]
    parse_config(single, "test")                     # a single node needs none


async def test_missing_secret_file_stops_the_start(tmp_path, pg_url, redis_url):
    state = tmp_path / "s"
    state.mkdir()
    text = cluster_text(state, pg_url, redis_url, "A", 2525)
    gone = tmp_path / "gone.key"
    text = text.replace(f'secret_file = "{tmp_path / "cluster-secret.txt"}"',
                        f'secret_file = "{gone}"')
    d = Daemon(parse_config(text, "test"))
    with pytest.raises(StartupError, match=f"cluster.secret_file {gone}: no such file"):
        await d.run()


async def test_a_node_with_another_secret_does_not_start(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2, start=False) as w:
        await w.start_node("A")
        other = tmp_path / "other.key"
        other.write_text(new_secret())
        w.texts["B"] = w.texts["B"].replace(str(tmp_path / "cluster-secret.txt"), str(other))
        d = Daemon(parse_config(w.texts["B"], "node B"))
        with pytest.raises(StartupError, match="every node needs the same secret file"):
            await d.run()

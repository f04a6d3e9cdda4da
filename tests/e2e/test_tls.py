"""TLS on the wire: pods reach nats-server and PostgreSQL over TLS with a throwaway CA,
and a client that does not trust that CA is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import trustme

from consumers.store.migrate import Migrator
from sandbox.natsauth import ServerTls
from sandbox.pg import DATABASE, PostgresServer
from tests.conftest import KEY
from tests.harness import batch, submit, wait_finished
from tests.secure import AuthStack, auth_stack


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _server_files(ca: trustme.CA, directory: Path, owner: str | None) -> ServerTls:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = ServerTls(cert=directory / "server.crt", key=directory / "server.key")
    cert.cert_chain_pems[0].write_to_path(str(tls.cert))
    cert.private_key_pem.write_to_path(str(tls.key))
    os.chmod(tls.key, 0o600)  # PostgreSQL refuses a key others can read
    if owner:
        for path in (tls.cert, tls.key):
            shutil.chown(path, owner)
    return tls


@pytest.fixture
async def tls_pg(ca: trustme.CA) -> AsyncIterator[PostgresServer]:
    """A PostgreSQL cluster that accepts TLS, its certificate issued by `ca`."""
    root = Path(tempfile.mkdtemp(prefix="batchyard-pg-tls-"))
    server = PostgresServer(root)
    try:
        await server.init()
        tls = _server_files(ca, server.data, server.user)
        server.options = ("ssl=on", f"ssl_cert_file={tls.cert}", f"ssl_key_file={tls.key}")
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_pods_use_tls_and_a_client_without_the_ca_is_refused(
        ca: trustme.CA, tls_pg: PostgresServer, emulator: Any, tmp_path: Path) -> None:
    """`run all` with NATS_TLS_CA and `sslmode=verify-full` embeds batches (and its
    PostgreSQL sessions are encrypted); without the CA, nats-py, asyncpg and a pod are
    all refused at the handshake."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    base = f"postgresql://postgres@127.0.0.1:{tls_pg.port}/{DATABASE}"
    db_url = f"{base}?sslmode=verify-full&sslrootcert={ca_file}"
    conn = await asyncpg.connect(db_url)
    try:
        await Migrator(conn).up()
    finally:
        await conn.close()
    trusted = ssl.create_default_context(cafile=str(ca_file))
    async with auth_stack(db_url, emulator, KEY, tmp_path,
                          server_tls=_server_files(ca, tmp_path, None), tls=trusted) as stack:
        assert stack.natsd.url.startswith("tls://")
        await _pipeline(stack, str(ca_file))
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats.connect(stack.natsd.url, user="operator",
                               password=stack.passwords["operator"],
                               allow_reconnect=False, max_reconnect_attempts=0)
        pod = await stack.pod("submit", **stack.login("submit"))  # no NATS_TLS_CA
        assert await asyncio.wait_for(pod.proc.wait(), 30) == 3
        assert pod.text().strip().splitlines()[-1].startswith(
            "batchyard: NATS TLS as submit failed: [SSL: CERTIFICATE_VERIFY_FAILED]")
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(base, ssl=ssl.create_default_context())


async def _pipeline(stack: AuthStack, ca_file: str) -> None:
    await stack.pod("all", NATS_TLS_CA=ca_file, **stack.login("all"))
    producer = await stack.connect("producer")
    for n in range(4):
        await submit(producer, batch(f"tls{n}", 5 if n % 2 else 30))
    await producer.close()
    assert await wait_finished(stack, 4, timeout=90) == {"succeeded": 4}
    db = await stack.db()
    try:
        assert await db.fetchval(
            "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
            "WHERE application_name = 'batchyard'")
    finally:
        await db.close()

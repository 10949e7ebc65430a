"""mTLS credentials from files, re-read when the files change."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from mesh.config import TlsConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Snapshot:
    mtimes: tuple[int, ...]
    ca: bytes
    cert: bytes
    key: bytes


class _FileTriple:
    """CA, certificate and key files, read together and noticed when any changes."""

    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self.paths = (ca, cert, key)
        self.current = self._read()

    def _mtimes(self) -> tuple[int, ...]:
        return tuple(path.stat().st_mtime_ns for path in self.paths)

    def _read(self) -> _Snapshot:
        mtimes = self._mtimes()
        ca, cert, key = (path.read_bytes() for path in self.paths)
        return _Snapshot(mtimes, ca, cert, key)

    def changed(self) -> _Snapshot | None:
        """The new contents if any file changed since the last read, else None."""
        try:
            if self._mtimes() == self.current.mtimes:
                return None
            fresh = self._read()
        except OSError as exc:
            log.warning("certificate files unreadable, keeping the loaded ones: %s", exc)
            return None
        if (fresh.ca, fresh.cert, fresh.key) == (
            self.current.ca,
            self.current.cert,
            self.current.key,
        ):
            self.current = fresh
            return None
        self.current = fresh
        log.info("certificate files changed, new handshakes use them: %s", self.paths[1])
        return fresh


def server_credentials(tls: TlsConfig, section: str = "tls") -> grpc.ServerCredentials:
    """Server credentials that require a client certificate signed by the configured CA.

    gRPC asks the fetcher before each handshake, so rotated files take effect for new
    connections without a restart; established streams keep their session.
    """
    files = _FileTriple(*tls.require_files(section))

    def config(snapshot: _Snapshot) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(snapshot.key, snapshot.cert)], root_certificates=snapshot.ca
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        fresh = files.changed()
        return config(fresh) if fresh else None

    # gRPC accepts None from the fetcher ("unchanged"); the stubs do not say so.
    return grpc.dynamic_ssl_server_credentials(
        config(files.current),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


def channel_credentials(tls: TlsConfig, section: str = "tls") -> grpc.ChannelCredentials:
    """Client credentials read fresh from the files (call again after a rotation)."""
    ca, cert, key = tls.require_files(section)
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )

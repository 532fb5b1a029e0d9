"""A real S3-compatible server (nanio) on a free loopback port, for the s3 storage backend.

nanio checks SigV4 signatures (headers and presigned URLs), their expiry, and refuses
anonymous requests, so the tests see what a real bucket would do. It keeps objects as files
in a temporary folder and is stopped when the tests end.
"""

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig

from tests.served_app import free_port, stop_process

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
else:
    S3Client = Any

REGION = "us-east-1"
_START_SECONDS = 30


class S3ServerError(RuntimeError):
    """The server could not be started."""


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    region: str = REGION

    def client(self) -> S3Client:
        client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        return client

    def environment(self, bucket: str) -> dict[str, str]:
        """The service's settings for STORAGE_BACKEND=s3 on this server."""
        return {
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET": bucket,
            "S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def start_s3_server(data_dir: Path) -> S3Server:
    """Start nanio on a free loopback port with fresh credentials; raises S3ServerError."""
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key = "tests-" + secrets.token_hex(4)
    secret_key = secrets.token_urlsafe(30)
    env = {**os.environ, "NANIO_ACCESS_KEY": access_key, "NANIO_SECRET_KEY": secret_key}
    log_path = data_dir.parent / f"{data_dir.name}.log"
    last_error = "it never answered"
    for _attempt in range(3):
        port = free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "nanio", "serve"),
                    *("--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)),
                    *("--region", REGION, "--log-level", "warning", "--no-access-log"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = S3Server(
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key=access_key,
            secret_key=secret_key,
            process=process,
            log_path=log_path,
        )
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(port):
                return server
            time.sleep(0.1)
        server.stop()
        last_error = (
            log_path.read_text(errors="replace")[-2000:] or f"exit code {process.returncode}"
        )
    raise S3ServerError(f"the S3-compatible test server did not start: {last_error}")

"""The stack's outputs, and an emulator with its queues and its paused dead-letter queue, for the taskclient
tests. Until the stack exports `dead_letter_queue`, the outputs name one in the stack's location."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from emulator_support import LoopbackEmulator, stack_queues

from contract.outputs import OutputName, StackOutputs
from harness import dev_outputs, dev_run

STAND_IN_DEAD_LETTER_QUEUE_ID = "tasks-dev-dead-letters-000000"


def outputs_document() -> dict[str, Any]:
    """The dev stack's outputs document, a fresh copy each call."""
    document = dev_outputs()
    if OutputName.DEAD_LETTER_QUEUE not in document:
        location = document[OutputName.DEFAULT_QUEUE_PATH].rsplit("/queues/", 1)[0]
        document[OutputName.DEAD_LETTER_QUEUE] = f"{location}/queues/{STAND_IN_DEAD_LETTER_QUEUE_ID}"
    return document


def stack() -> StackOutputs:
    return StackOutputs.from_mapping(outputs_document())


def stack_emulator(**options: Any) -> LoopbackEmulator:
    """A LoopbackEmulator (not yet started) with the dev stack's queues and its dead-letter queue, paused."""
    server = LoopbackEmulator(stack_queues(dev_run()), **options)
    dead_letters = stack().dead_letter_queue
    if dead_letters not in server.queues:
        server.queues.append(server.add_queue(dead_letters))
    server.pause(dead_letters)
    return server


def run_with_stderr_on_a_terminal(
    command: Sequence[str], env: Mapping[str, str], timeout: float = 60
) -> tuple[int, str, bytes]:
    """Runs `command` with stderr on a pseudo-terminal (read while it runs, so it never blocks on it) and stdout
    on a pipe: (exit status, stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    shown = bytearray()
    process = subprocess.Popen(list(command), env=dict(env), stderr=follower, stdout=subprocess.PIPE, text=True)
    os.close(follower)
    reader = threading.Thread(target=_drain, args=(leader, shown))
    reader.start()
    stdout, _ = process.communicate(timeout=timeout)
    reader.join(timeout=10)
    os.close(leader)
    return process.returncode, stdout, bytes(shown)


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closed: the command has exited
            return
        if not chunk:
            return
        into += chunk


def service_account_key(path: Path, token_uri: str) -> Path:
    """A service account key made here (a fresh RSA key), written to `path`: what application default
    credentials read from GOOGLE_APPLICATION_CREDENTIALS. Tokens are asked of `token_uri`, on loopback."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    document = {
        "type": "service_account",
        "project_id": "my-tasks-dev",
        "private_key_id": "k1",
        "private_key": pem.decode(),
        "client_email": "api-dev@my-tasks-dev.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(document))
    return path

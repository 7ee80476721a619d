"""Log lines from several worker processes sharing one stderr pipe stay whole: each process
writes whole lines in chunks of at most PIPE_BUF, which a pipe never interleaves."""

from __future__ import annotations

import fcntl
import os

from ca_server.logs import BufferedLineLogger

F_SETPIPE_SZ = 1031  # Linux: shrink the pipe so that writers block and contend


def test_lines_from_several_processes_sharing_a_pipe_never_interleave() -> None:
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, F_SETPIPE_SZ, 4096)
    writers = []
    for worker in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: many lines, several KiB per flush
            os.close(read_fd)
            logger = BufferedLineLogger(write_fd)
            for i in range(3000):
                logger.info(b'{"worker":%d,"i":%d,"pad":"%s"}' % (worker, i, b"x" * 200))
                if i % 50 == 0:
                    logger.flush()
            logger.flush()
            os._exit(0)
        writers.append(pid)
    os.close(write_fd)
    received = bytearray()
    while chunk := os.read(read_fd, 65536):
        received += chunk
    os.close(read_fd)
    for pid in writers:
        assert os.waitpid(pid, 0)[1] == 0
    lines = bytes(received).splitlines()
    assert len(lines) == 3 * 3000
    pad = b"x" * 200
    assert all(line.startswith(b'{"worker":') and line.endswith(b'"%s"}' % pad) for line in lines)

// Finding the TCP connection a request came on, to notice a client that left while a
// non-streamed completion is still being generated (streams notice it when a write fails;
// a whole response writes nothing until the end). cpp-httplib 0.11 hands a handler the
// connection's addresses but not its socket, so the socket is found among the process's
// descriptors by those addresses (Linux: /proc/self/fd).
#pragma once

#include <string>

namespace dsv3::serve {

// The descriptor of the connected TCP socket whose peer is remote_addr:remote_port and whose
// local port is local_port, or -1 when there is none (or the addresses do not parse).
int find_client_socket(const std::string& remote_addr, int remote_port, int local_port);

// Whether the peer of connected socket `fd` has closed its side or the connection failed,
// without reading any of its data. A client that half-closes and still waits for the answer is
// counted as gone; HTTP clients do not do that.
bool client_gone(int fd);

}  // namespace dsv3::serve

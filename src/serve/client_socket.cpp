// Finding a request's TCP connection by its addresses; see client_socket.hpp.
#include "serve/client_socket.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace dsv3::serve {
namespace {

// The port of a socket address (IPv4 or IPv6), or -1.
int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// The numeric host of a socket address, as httplib writes it (inet_ntop), or "".
std::string host_of(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  const void* src = nullptr;
  if (a.ss_family == AF_INET)
    src = &reinterpret_cast<const sockaddr_in&>(a).sin_addr;
  else if (a.ss_family == AF_INET6)
    src = &reinterpret_cast<const sockaddr_in6&>(a).sin6_addr;
  if (!src || !inet_ntop(a.ss_family, src, buf, sizeof buf)) return "";
  return buf;
}

}  // namespace

int find_client_socket(const std::string& remote_addr, int remote_port, int local_port) {
  if (remote_addr.empty() || remote_port <= 0 || local_port <= 0) return -1;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    char* end = nullptr;
    const std::string name = e.path().filename().string();
    const long fd = std::strtol(name.c_str(), &end, 10);
    if (end == name.c_str() || *end != '\0' || fd < 0) continue;
    struct stat st {};
    if (fstat(int(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, local{};
    socklen_t pl = sizeof peer, ll = sizeof local;
    if (getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (port_of(peer) == remote_port && port_of(local) == local_port &&
        host_of(peer) == remote_addr)
      return int(fd);
  }
  return -1;
}

bool client_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, short(POLLIN | POLLRDHUP), 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  if (!(p.revents & POLLIN)) return false;
  // Readable without a hang-up flag: data (a pipelined request) or an orderly end of stream.
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

}  // namespace dsv3::serve

// vduse_native: the syscalls vduse-ts needs, exposed through Node-API (node-addon-api, C++ exceptions).
//
// This file only calls the kernel. Argument checking, struct encoding and everything else live in
// TypeScript (src/sys/binding.ts documents each function). Failures throw Node-style system errors:
// an Error with `code` ('ENOTTY'), `errno` (negative, as libuv reports it) and `syscall` ('ioctl').
//
// Only Node-API and a handful of libuv functions are used, so the built addon is ABI-stable across
// Node versions.

#include <napi.h>
#include <uv.h>

#include <fcntl.h>
#include <limits.h>
#include <linux/netlink.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Errors and argument helpers

// A Node-style system error, shaped like the ones libuv-backed fs/net calls throw.
Napi::Error SystemError(Napi::Env env, int err, const char* syscall) {
  char name[64];
  char text[128];
  // On Unix a libuv error code is the negated errno.
  uv_err_name_r(-err, name, sizeof name);
  uv_strerror_r(-err, text, sizeof text);
  Napi::Error error = Napi::Error::New(env, std::string(name) + ": " + text + ", " + syscall);
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("code", Napi::String::New(env, name));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall) {
  throw SystemError(env, errno, syscall);
}

int FdArg(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int32Value(); }

int64_t IntArg(const Napi::CallbackInfo& info, size_t i) { return info[i].As<Napi::Number>().Int64Value(); }

// The bytes of a TypedArray (Buffer, Uint8Array, ...), DataView or ArrayBuffer, without copying.
struct Bytes {
  void* data = nullptr;
  size_t length = 0;
};

size_t ElementSize(napi_typedarray_type type) {
  switch (type) {
    case napi_int16_array:
    case napi_uint16_array:
      return 2;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      return 4;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      return 8;
    default:
      return 1;
  }
}

Bytes BytesOf(napi_env env, napi_value value) {
  Bytes bytes;
  bool is = false;
  if (napi_is_typedarray(env, value, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t count = 0;
    NAPI_THROW_IF_FAILED(env,
                         napi_get_typedarray_info(env, value, &type, &count, &bytes.data, nullptr, nullptr),
                         bytes);
    bytes.length = count * ElementSize(type);
  } else if (napi_is_dataview(env, value, &is) == napi_ok && is) {
    NAPI_THROW_IF_FAILED(env, napi_get_dataview_info(env, value, &bytes.length, &bytes.data, nullptr, nullptr),
                         bytes);
  } else if (napi_is_arraybuffer(env, value, &is) == napi_ok && is) {
    NAPI_THROW_IF_FAILED(env, napi_get_arraybuffer_info(env, value, &bytes.data, &bytes.length), bytes);
  } else {
    throw Napi::TypeError::New(env, "expected a TypedArray, DataView or ArrayBuffer");
  }
  return bytes;
}

Bytes BytesArg(const Napi::CallbackInfo& info, size_t i) { return BytesOf(info.Env(), info[i]); }

// An array of buffers as iovecs in `iov` (room for IOV_MAX). Only the first IOV_MAX buffers are taken
// (the caller sees a short transfer and goes on with the rest). Returns how many were filled in.
int IovecsArg(const Napi::CallbackInfo& info, size_t i, iovec* iov) {
  napi_env env = info.Env();
  napi_value array = info[i];
  uint32_t length = 0;
  if (napi_get_array_length(env, array, &length) != napi_ok) {
    throw Napi::TypeError::New(env, "expected an array of TypedArrays");
  }
  uint32_t count = length < IOV_MAX ? length : IOV_MAX;
  for (uint32_t k = 0; k < count; k++) {
    napi_value element;
    NAPI_THROW_IF_FAILED(env, napi_get_element(env, array, k, &element), 0);
    Bytes bytes = BytesOf(env, element);
    iov[k].iov_base = bytes.data;
    iov[k].iov_len = bytes.length;
  }
  return static_cast<int>(count);
}

// Runs a syscall again while it is interrupted by a signal.
template <typename F>
auto RetryEintr(F call) {
  decltype(call()) result;
  do {
    result = call();
  } while (result < 0 && errno == EINTR);
  return result;
}

bool WouldBlock() { return errno == EAGAIN || errno == EWOULDBLOCK; }

// ---------------------------------------------------------------------------------------------
// ioctl

Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  // Requests are unsigned: _IOR/_IOWR numbers have bit 31 set and arrive as numbers >= 2^31.
  // A negative number (a request built with JS bit operators) is taken as its 32-bit pattern.
  int64_t raw = IntArg(info, 1);
  unsigned long request =
      raw < 0 ? static_cast<unsigned long>(static_cast<uint32_t>(raw)) : static_cast<unsigned long>(raw);
  int result;
  if (info[2].IsNumber()) {
    unsigned long arg = static_cast<unsigned long>(IntArg(info, 2));
    result = RetryEintr([&] { return ioctl(fd, request, arg); });
  } else {
    void* arg = BytesArg(info, 2).data;
    result = RetryEintr([&] { return ioctl(fd, request, arg); });
  }
  if (result < 0) ThrowErrno(env, "ioctl");
  return Napi::Number::New(env, result);
}

// ---------------------------------------------------------------------------------------------
// mmap / munmap
//
// A mapping is handed to JS as an external ArrayBuffer over the mapped pages (zero copy). Two things
// can end it: munmap(ab) from JS, or the GC finalizer when the ArrayBuffer is dropped. `unmapped`
// makes sure only the first one calls munmap(2): the address range may already be reused by a later
// mmap when the second one runs. Both run on the JS thread of the environment, so a plain bool is
// enough. The Mapping is owned by the finalizer, which always runs eventually (at the latest when the
// environment is torn down), also after a detach.

struct Mapping {
  void* addr;
  size_t length;
  bool unmapped;
};

// Bumped by every munmap of a mapping (from JS or its finalizer), on any thread: a KickLoop that keeps raw
// pointers into guest memory (its ring watches) looks its views up again when it changed, so it never reads
// a page that went away.
std::atomic<uint64_t> g_unmap_epoch{0};

void FinalizeMapping(Napi::Env, void*, Mapping* mapping) {
  if (!mapping->unmapped) {
    g_unmap_epoch.fetch_add(1, std::memory_order_relaxed);
    munmap(mapping->addr, mapping->length);
  }
  delete mapping;
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  size_t length = static_cast<size_t>(IntArg(info, 1));
  int prot = info[2].As<Napi::Number>().Int32Value();
  int flags = info[3].As<Napi::Number>().Int32Value();
  off_t offset = static_cast<off_t>(IntArg(info, 4));
  void* addr = mmap(nullptr, length, prot, flags, fd, offset);
  if (addr == MAP_FAILED) ThrowErrno(env, "mmap");
  Mapping* mapping = new Mapping{addr, length, false};
  Napi::ArrayBuffer buffer;
  try {
    buffer = Napi::ArrayBuffer::New(env, addr, length, FinalizeMapping, mapping);
  } catch (...) {
    munmap(addr, length);
    delete mapping;
    throw;
  }
  // munmap(ab) finds its Mapping through this wrap. No wrap finalizer: FinalizeMapping owns it.
  NAPI_THROW_IF_FAILED(env, napi_wrap(env, buffer, mapping, nullptr, nullptr, nullptr), Napi::Value());
  return buffer;
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  napi_value buffer = info[0];
  bool detached = false;
  NAPI_THROW_IF_FAILED(env, napi_is_detached_arraybuffer(env, buffer, &detached), Napi::Value());
  // Already unmapped: once detached the finalizer may have freed the Mapping, so do not look it up.
  if (detached) return env.Undefined();
  void* data = nullptr;
  if (napi_unwrap(env, buffer, &data) != napi_ok || data == nullptr) {
    throw Napi::TypeError::New(env, "munmap: not an ArrayBuffer returned by mmap");
  }
  Mapping* mapping = static_cast<Mapping*>(data);
  // Detach first: every TypedArray/DataView over the buffer becomes length 0, so JS can never touch
  // the pages after they are gone (reads give undefined instead of a SIGSEGV).
  NAPI_THROW_IF_FAILED(env, napi_detach_arraybuffer(env, buffer), Napi::Value());
  mapping->unmapped = true;
  g_unmap_epoch.fetch_add(1, std::memory_order_relaxed);
  if (munmap(mapping->addr, mapping->length) < 0) ThrowErrno(env, "munmap");
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------
// memfd, eventfd, read/write, preadv2/pwritev2, fallocate, fence

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  unsigned int flags = info[1].As<Napi::Number>().Uint32Value();
  int fd = memfd_create(name.c_str(), flags);
  if (fd < 0) ThrowErrno(env, "memfd_create");
  return Napi::Number::New(env, fd);
}

Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned int initval = info[0].As<Napi::Number>().Uint32Value();
  int flags = info[1].As<Napi::Number>().Int32Value();
  int fd = eventfd(initval, flags);
  if (fd < 0) ThrowErrno(env, "eventfd");
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  uint64_t value = 0;
  ssize_t n = RetryEintr([&] { return read(fd, &value, sizeof value); });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "read");
  }
  return Napi::Number::New(env, static_cast<double>(value));
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  uint64_t value = static_cast<uint64_t>(IntArg(info, 1));
  ssize_t n = RetryEintr([&] { return write(fd, &value, sizeof value); });
  if (n < 0) ThrowErrno(env, "write");
  return env.Undefined();
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes bytes = BytesArg(info, 1);
  ssize_t n = RetryEintr([&] { return read(fd, bytes.data, bytes.length); });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "read");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes bytes = BytesArg(info, 1);
  ssize_t n = RetryEintr([&] { return write(fd, bytes.data, bytes.length); });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "write");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// preadv2/pwritev2(fd, buffers, offset, flags): positional vectored I/O with RWF_* flags, on the
// calling thread. The iovecs live on the stack (IOV_MAX of them: 16 KiB, touched only as far as used).
// Returns the byte count, or -1 when the call would block (EAGAIN, e.g. RWF_NOWAIT and a page-cache miss).
template <bool kWrite>
Napi::Value VectoredIo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  iovec iov[IOV_MAX];
  int count = IovecsArg(info, 1, iov);
  off_t offset = static_cast<off_t>(IntArg(info, 2));
  int flags = info[3].As<Napi::Number>().Int32Value();
  ssize_t n = RetryEintr([&] {
    return kWrite ? pwritev2(fd, iov, count, offset, flags) : preadv2(fd, iov, count, offset, flags);
  });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, kWrite ? "pwritev2" : "preadv2");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int mode = info[1].As<Napi::Number>().Int32Value();
  off_t offset = static_cast<off_t>(IntArg(info, 2));
  off_t length = static_cast<off_t>(IntArg(info, 3));
  if (RetryEintr([&] { return fallocate(fd, mode, offset, length); }) < 0) ThrowErrno(env, "fallocate");
  return env.Undefined();
}

Napi::Value Fence(const Napi::CallbackInfo& info) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return info.Env().Undefined();
}

// ---------------------------------------------------------------------------------------------
// Netlink sockets

Napi::Value NetlinkSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int protocol = info[0].As<Napi::Number>().Int32Value();
  int type = SOCK_RAW | SOCK_CLOEXEC;
  if (info[1].ToBoolean()) type |= SOCK_NONBLOCK;
  int fd = socket(AF_NETLINK, type, protocol);
  if (fd < 0) ThrowErrno(env, "socket");
  sockaddr_nl addr{};
  addr.nl_family = AF_NETLINK;
  addr.nl_pid = 0;  // the kernel assigns a unique port id
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    int err = errno;
    close(fd);
    throw SystemError(env, err, "bind");
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes bytes = BytesArg(info, 1);
  ssize_t n = RetryEintr([&] { return send(fd, bytes.data, bytes.length, 0); });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "send");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Recv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes bytes = BytesArg(info, 1);
  ssize_t n = RetryEintr([&] { return recv(fd, bytes.data, bytes.length, 0); });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "recv");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// ---------------------------------------------------------------------------------------------
// Unix-domain stream sockets with fd passing (vhost-user). Every fd made here is CLOEXEC; the
// listening and accepted ones are non-blocking (the caller drives them with an FdWatcher).

constexpr int kMaxPassedFds = 32;

bool UnixAddress(const std::string& path, sockaddr_un* addr, socklen_t* len) {
  if (path.empty() || path.size() >= sizeof addr->sun_path) return false;
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  memcpy(addr->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return true;
}

// unixListen(path, backlog, mode): bind a new socket at `path`, chmod it to `mode` before listen()
// (nobody can connect while it still has the umask's mode), then listen. The path must not exist
// (the caller decides about stale sockets).
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int backlog = info[1].As<Napi::Number>().Int32Value();
  mode_t mode = static_cast<mode_t>(info[2].As<Napi::Number>().Uint32Value());
  sockaddr_un addr;
  socklen_t len;
  if (!UnixAddress(path, &addr, &len)) throw SystemError(env, ENAMETOOLONG, "bind");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) ThrowErrno(env, "socket");
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    int err = errno;
    close(fd);
    throw SystemError(env, err, "bind");
  }
  if (chmod(path.c_str(), mode) < 0 || listen(fd, backlog) < 0) {
    int err = errno;
    unlink(path.c_str());
    close(fd);
    throw SystemError(env, err, "listen");
  }
  return Napi::Number::New(env, fd);
}

// unixConnect(path): a connected socket (the connect itself blocks, which for a Unix socket is at
// most a full backlog), then switched to non-blocking.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  sockaddr_un addr;
  socklen_t len;
  if (!UnixAddress(path, &addr, &len)) throw SystemError(env, ENAMETOOLONG, "connect");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket");
  if (RetryEintr([&] { return connect(fd, reinterpret_cast<sockaddr*>(&addr), len); }) < 0) {
    int err = errno;
    close(fd);
    throw SystemError(env, err, "connect");
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    int err = errno;
    close(fd);
    throw SystemError(env, err, "fcntl");
  }
  return Napi::Number::New(env, fd);
}

// accept4(fd): the next connection (non-blocking, CLOEXEC), or -1 when none is waiting.
Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int conn = RetryEintr([&] { return accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC); });
  if (conn < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "accept4");
  }
  return Napi::Number::New(env, conn);
}

// socketpair(): two connected non-blocking CLOEXEC stream sockets.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) < 0) ThrowErrno(env, "socketpair");
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, fds[0]));
  result.Set(1u, Napi::Number::New(env, fds[1]));
  return result;
}

// recvmsg(fd, buffer, maxFds): {bytes, fds} with up to maxFds (<= 32) fds received as SCM_RIGHTS, or
// -1 when it would block. Received fds are CLOEXEC. A message with more fds than fit (MSG_CTRUNC),
// or a truncated payload, closes every fd that did arrive and throws EMSGSIZE.
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes bytes = BytesArg(info, 1);
  int max_fds = info[2].As<Napi::Number>().Int32Value();
  if (max_fds < 0) max_fds = 0;
  if (max_fds > kMaxPassedFds) max_fds = kMaxPassedFds;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  iovec iov{bytes.data, bytes.length};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = max_fds > 0 ? CMSG_SPACE(sizeof(int) * max_fds) : 0;
  ssize_t n = RetryEintr([&] { return recvmsg(fd, &msg, MSG_CMSG_CLOEXEC); });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "recvmsg");
  }
  int fds[kMaxPassedFds];
  int count = 0;
  if (msg.msg_controllen > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* data = CMSG_DATA(c);
      for (size_t j = 0; j < k; j++) {
        int received;
        memcpy(&received, data + j * sizeof(int), sizeof(int));
        if (count < kMaxPassedFds) {
          fds[count++] = received;
        } else {
          close(received);
        }
      }
    }
  }
  // CMSG_SPACE rounds up, so the buffer may hold one fd more than asked for: count them too.
  if ((msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0 || count > max_fds) {
    for (int j = 0; j < count; j++) close(fds[j]);
    throw SystemError(env, EMSGSIZE, "recvmsg");
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  Napi::Array list = Napi::Array::New(env, count);
  for (int j = 0; j < count; j++) list.Set(static_cast<uint32_t>(j), Napi::Number::New(env, fds[j]));
  result.Set("fds", list);
  return result;
}

// sendmsg(fd, buffer, fds): send `buffer` with the fds (<= 32) as SCM_RIGHTS; MSG_NOSIGNAL (a closed
// peer is EPIPE, not SIGPIPE). Returns the byte count, or -1 when it would block.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes bytes = BytesArg(info, 1);
  Napi::Array list = info[2].As<Napi::Array>();
  uint32_t count = list.Length();
  if (count > kMaxPassedFds) throw SystemError(env, EINVAL, "sendmsg");
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  iovec iov{bytes.data, bytes.length};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (count > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
    memset(control, 0, msg.msg_controllen);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * count);
    for (uint32_t j = 0; j < count; j++) {
      int v = list.Get(j).As<Napi::Number>().Int32Value();
      memcpy(CMSG_DATA(c) + j * sizeof(int), &v, sizeof(int));
    }
  }
  ssize_t n = RetryEintr([&] { return sendmsg(fd, &msg, MSG_NOSIGNAL); });
  if (n < 0) {
    if (WouldBlock()) return Napi::Number::New(env, -1);
    ThrowErrno(env, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// ---------------------------------------------------------------------------------------------
// FdWatcher: an fd watched by a libuv uv_poll_t.
//
// The handle lives on the loop napi_get_uv_event_loop() returns, i.e. the loop of the thread (main or
// worker) that created the watcher; uv_default_loop() would be the main thread's loop even in a worker.
//
// The uv_poll_t is heap-allocated in a Poll, separately from the JS object: uv_close() completes
// asynchronously, so the handle memory must outlive the FdWatcher when it is garbage collected. The
// Poll is freed in the close callback. If the environment is torn down while a handle is still open
// (e.g. a worker exits), an async cleanup hook closes it and Node waits for the close callback before
// closing the loop.

class FdWatcher;

struct Poll {
  uv_poll_t handle;
  FdWatcher* owner;  // null once closing
  napi_async_cleanup_hook_handle cleanup_hook;
};

class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {
                           InstanceMethod<&FdWatcher::Start>("start"),
                           InstanceMethod<&FdWatcher::Stop>("stop"),
                           InstanceMethod<&FdWatcher::Close>("close"),
                           InstanceMethod<&FdWatcher::UnrefHandle>("unref"),
                           InstanceMethod<&FdWatcher::RefHandle>("ref"),
                       });
  }

  FdWatcher(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<FdWatcher>(info), async_context_(info.Env(), "FdWatcher") {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0);
    // The callback often closes over the watcher itself. A strong reference from C++ would make that
    // a cycle through a GC root and the watcher could never be collected, so the JS object holds the
    // callback (a read-only property) and C++ keeps only a weak reference to it.
    Napi::Function callback = info[1].As<Napi::Function>();
    info.This().As<Napi::Object>().DefineProperty(
        Napi::PropertyDescriptor::Value("callback", callback, napi_default));
    callback_ = Napi::Weak(callback);
    uv_loop_t* loop = nullptr;
    NAPI_THROW_IF_FAILED_VOID(env, napi_get_uv_event_loop(env, &loop));
    Poll* poll = new Poll{};
    int err = uv_poll_init(loop, &poll->handle, fd);
    if (err < 0) {
      delete poll;  // never registered with the loop: no uv_close needed
      throw SystemError(env, -err, "uv_poll_init");
    }
    poll->handle.data = poll;
    poll->owner = this;
    napi_add_async_cleanup_hook(env, OnTeardown, poll, &poll->cleanup_hook);
    poll_ = poll;
  }

  ~FdWatcher() override { CloseHandle(); }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (poll_ == nullptr) throw Napi::Error::New(env, "FdWatcher is closed");
    int events = info[0].As<Napi::Number>().Int32Value();
    int err = uv_poll_start(&poll_->handle, events, OnPoll);
    if (err < 0) throw SystemError(env, -err, "uv_poll_start");
    // Keep the JS object (and so the callback) alive while watching, even if JS drops it.
    if (!active_) Napi::ObjectWrap<FdWatcher>::Ref();
    active_ = true;
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopPoll();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(&poll_->handle));
    return info.Env().Undefined();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(&poll_->handle));
    return info.Env().Undefined();
  }

  void StopPoll() {
    if (poll_ != nullptr) uv_poll_stop(&poll_->handle);
    if (active_) {
      active_ = false;
      Napi::ObjectWrap<FdWatcher>::Unref();
    }
  }

  void CloseHandle() {
    StopPoll();
    Poll* poll = poll_;
    if (poll == nullptr) return;
    poll_ = nullptr;
    poll->owner = nullptr;
    napi_remove_async_cleanup_hook(poll->cleanup_hook);
    poll->cleanup_hook = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&poll->handle), OnClosed);
  }

  static void OnClosed(uv_handle_t* handle) {
    Poll* poll = static_cast<Poll*>(handle->data);
    if (poll->cleanup_hook != nullptr) napi_remove_async_cleanup_hook(poll->cleanup_hook);
    delete poll;
  }

  // The environment is going away with this handle still open. The FdWatcher object may outlive
  // this call (its finalizer runs later), so detach it from the Poll before closing.
  static void OnTeardown(napi_async_cleanup_hook_handle, void* data) {
    Poll* poll = static_cast<Poll*>(data);
    if (poll->owner != nullptr) {
      poll->owner->poll_ = nullptr;
      poll->owner->active_ = false;  // no Unref(): references are being torn down anyway
      poll->owner = nullptr;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&poll->handle), OnClosed);  // removes the hook when done
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    Poll* poll = static_cast<Poll*>(handle->data);
    FdWatcher* self = poll->owner;
    if (self == nullptr) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    // MakeCallback (not Function::Call): it enters the watcher's async context and, on return to the
    // loop, runs process.nextTick callbacks and microtasks, as for any Node I/O callback. A plain Call
    // from a libuv callback would leave promise continuations waiting for some unrelated callback.
    napi_value argv[2] = {Napi::Number::New(env, status), Napi::Number::New(env, events)};
    napi_value result;
    if (napi_make_callback(env, self->async_context_, self->Value(), self->callback_.Value(), 2, argv, &result) ==
        napi_pending_exception) {
      // No JS caller to throw to: report it like any uncaught exception. (While a worker is being
      // terminated there is nothing to report; Node ignores the fatal exception then.)
      napi_value error;
      if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_fatal_exception(env, error);
    }
    // `self` may be gone from here on (the callback may have closed it).
  }

  Napi::FunctionReference callback_;
  Napi::AsyncContext async_context_;
  Poll* poll_ = nullptr;
  bool active_ = false;
};

// ---------------------------------------------------------------------------------------------
// KickLoop: a queue thread's run-to-completion wait for kicks (src/sys/binding.ts, KickLoop).
//
// Serving a kick through FdWatcher costs three crossings and a libuv iteration per wake-up: the uv_poll
// callback, an eventfdRead, then an ioctl (VDUSE_VQ_INJECT_IRQ) or eventfd write per interrupt. Here a
// uv_prepare handle waits instead, right where libuv would block: on an epoll fd holding the queues' kick
// eventfds and libuv's own backend fd, for at most uv_backend_timeout(loop) (exact in a prepare callback:
// it runs right before libuv polls, so pending immediates, closing handles or a stop give 0, a timer its
// delay). Kicks are drained here and marked in `kicked` (an Int32Array shared with JS, one word per queue);
// then ONE MakeCallback serves every marked queue (microtasks drain as the callback scope closes); then the
// interrupts JS marked in `signals` are injected. While only kicks arrive the thread never goes back
// through libuv; once libuv's backend fd is ready (thread-pool completions, sockets, the worker's
// MessagePort), a timer is due or a watcher change waits to reach libuv's epoll, control returns to libuv,
// which runs its callbacks and comes back to prepare. Interrupts marked by those callbacks are injected at the start of the next prepare, so none
// waits while the thread blocks.
//
// The loop state lives in a heap KickLoopState, apart from the JS object, for the same reason as Poll
// above (uv_close completes asynchronously; the env teardown hook may close it first). The typed arrays
// are held by strong references, so their memory outlives the raw pointers kept here.

class KickLoop;

constexpr uint32_t kBackendTag = UINT32_MAX;

// libuv applies watcher changes (a uv_poll or stream starting, a write waiting for POLLOUT) to its epoll fd
// lazily, at the top of its poll phase: while any is queued, the backend fd cannot report that fd, so the loop
// must not block here. (uv_loop_t's layout is part of libuv 1.x's ABI; the queue is empty when it points to
// itself.)
bool WatchersPending(uv_loop_t* loop) { return loop->watcher_queue.next != &loop->watcher_queue; }

struct KickLoopState {
  uv_prepare_t handle;
  // Started (unref'd) when control goes back to libuv although its poll would block (watcher changes to
  // apply, EINTR, JS that could not run): an active idle handle makes that poll not wait, so the kicks, which
  // only this loop watches, are not left waiting. Stopped by the next prepare.
  uv_idle_t idle;
  KickLoop* owner;  // null once closing
  napi_async_cleanup_hook_handle cleanup_hook;
  int ep;
  int open_handles;  // freed when both handles are closed
};

// Slots of KickLoop#stats (a Float64Array of JS's).
constexpr size_t kStatFailedIrqs = 0;  // interrupts that could not be injected
constexpr size_t kStatLastErrno = 1;   // the errno of the last one
constexpr size_t kStatWakeups = 2;     // epoll_wait returns with at least one kick
constexpr size_t kStatPolls = 3;       // spins over the watched rings
constexpr size_t kStatPollHits = 4;    // spins that found new work
constexpr size_t kStatPollNs = 5;      // time spent spinning
constexpr size_t kStatAbsorbed = 6;    // kicks for work a spin had already found (no callback)
constexpr size_t kStatCount = 7;

// Ring watches (KickLoop::Watch): what kind of word the loop reads.
constexpr int32_t kWatchSplit = 0;   // view = the avail ring (u16: flags, idx, ...): work when idx != mark
constexpr int32_t kWatchPacked = 1;  // view = the descriptor ring (u16): work when the descriptor at the mark's
                                     // position is available for the mark's wrap counter (spec 2.8.1)
// Time between looks at the epoll set while spinning (other fds, libuv's work), and the clock reads.
constexpr int64_t kSpinCheckNs = 20000;

inline int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

class KickLoop : public Napi::ObjectWrap<KickLoop> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KickLoop",
                       {
                           InstanceMethod<&KickLoop::Start>("start"),
                           InstanceMethod<&KickLoop::Stop>("stop"),
                           InstanceMethod<&KickLoop::Close>("close"),
                           InstanceMethod<&KickLoop::AddKick>("addKick"),
                           InstanceMethod<&KickLoop::RemoveKick>("removeKick"),
                           InstanceMethod<&KickLoop::SetInterrupt>("setInterrupt"),
                           InstanceMethod<&KickLoop::Flush>("flush"),
                           InstanceMethod<&KickLoop::UnrefHandle>("unref"),
                           InstanceMethod<&KickLoop::RefHandle>("ref"),
                           InstanceMethod<&KickLoop::Watch>("watch"),
                           InstanceMethod<&KickLoop::SetPoll>("setPoll"),
                       });
  }

  // new KickLoop(callback, kicked: Int32Array, signals: Int32Array, injected: Float64Array,
  //              stats: Float64Array, marks: Int32Array, kicks?: Float64Array); every array has one slot
  //              per queue (stats: kStatCount). marks[i]: where queue i's ring is idle (see Watch), -1 when
  //              not known idle. kicks[i] counts queue i's kicks (absorbed ones too).
  KickLoop(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KickLoop>(info), async_context_(info.Env(), "KickLoop") {
    Napi::Env env = info.Env();
    // As FdWatcher: the JS object holds the callback, C++ a weak reference (no cycle through a GC root).
    Napi::Function callback = info[0].As<Napi::Function>();
    info.This().As<Napi::Object>().DefineProperty(
        Napi::PropertyDescriptor::Value("callback", callback, napi_default));
    callback_ = Napi::Weak(callback);
    Napi::Int32Array kicked = info[1].As<Napi::Int32Array>();
    Napi::Int32Array signals = info[2].As<Napi::Int32Array>();
    Napi::Float64Array injected = info[3].As<Napi::Float64Array>();
    Napi::Float64Array stats = info[4].As<Napi::Float64Array>();
    Napi::Int32Array marks = info[5].As<Napi::Int32Array>();
    size_t n = kicked.ElementLength();
    if (signals.ElementLength() != n || injected.ElementLength() != n || marks.ElementLength() != n ||
        stats.ElementLength() < kStatCount)
      throw Napi::RangeError::New(env, "KickLoop: arrays of different lengths");
    arrays_[0] = Napi::Persistent(kicked.As<Napi::Object>());
    arrays_[1] = Napi::Persistent(signals.As<Napi::Object>());
    arrays_[2] = Napi::Persistent(injected.As<Napi::Object>());
    arrays_[3] = Napi::Persistent(stats.As<Napi::Object>());
    arrays_[4] = Napi::Persistent(marks.As<Napi::Object>());
    marks_ = marks.Data();
    if (info.Length() > 6 && info[6].IsTypedArray()) {
      Napi::Float64Array kicks = info[6].As<Napi::Float64Array>();
      if (kicks.ElementLength() != n) throw Napi::RangeError::New(env, "KickLoop: arrays of different lengths");
      arrays_[5] = Napi::Persistent(kicks.As<Napi::Object>());
      kicks_ = kicks.Data();
    } else {
      own_kicks_.assign(n, 0);
      kicks_ = own_kicks_.data();
    }
    watches_.resize(n);
    kicked_ = kicked.Data();
    signals_ = signals.Data();
    injected_ = injected.Data();
    stats_ = stats.Data();
    kick_fd_.assign(n, -1);
    irq_fd_.assign(n, -1);
    irq_request_.assign(n, 0);

    uv_loop_t* loop = nullptr;
    NAPI_THROW_IF_FAILED_VOID(env, napi_get_uv_event_loop(env, &loop));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) ThrowErrno(env, "epoll_create1");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = kBackendTag;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, uv_backend_fd(loop), &ev) < 0) {
      int err = errno;
      close(ep);
      throw SystemError(env, err, "epoll_ctl");
    }
    KickLoopState* state = new KickLoopState{};
    int err = uv_prepare_init(loop, &state->handle);
    if (err < 0) {
      close(ep);
      delete state;
      throw SystemError(env, -err, "uv_prepare_init");
    }
    uv_idle_init(loop, &state->idle);
    uv_unref(reinterpret_cast<uv_handle_t*>(&state->idle));
    state->handle.data = state;
    state->idle.data = state;
    state->open_handles = 2;
    state->owner = this;
    state->ep = ep;
    napi_add_async_cleanup_hook(env, OnTeardown, state, &state->cleanup_hook);
    state_ = state;
  }

  ~KickLoop() override { CloseHandle(); }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (state_ == nullptr) throw Napi::Error::New(env, "KickLoop is closed");
    int err = uv_prepare_start(&state_->handle, OnPrepare);
    if (err < 0) throw SystemError(env, -err, "uv_prepare_start");
    if (!active_) Napi::ObjectWrap<KickLoop>::Ref();
    active_ = true;
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopPrepare();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    return info.Env().Undefined();
  }

  // addKick(index, fd): wait for kicks of queue `index` on eventfd `fd` (level-triggered).
  Napi::Value AddKick(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (state_ == nullptr) throw Napi::Error::New(env, "KickLoop is closed");
    size_t i = IndexArg(info, 0);
    int fd = FdArg(info, 1);
    if (kick_fd_[i] >= 0) throw SystemError(env, EEXIST, "epoll_ctl");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<uint32_t>(i);
    if (epoll_ctl(state_->ep, EPOLL_CTL_ADD, fd, &ev) < 0) ThrowErrno(env, "epoll_ctl");
    kick_fd_[i] = fd;
    return env.Undefined();
  }

  // removeKick(index): stop waiting for kicks of queue `index` (before its fd is closed). No-op when none.
  // Its ring watch goes too.
  Napi::Value RemoveKick(const Napi::CallbackInfo& info) {
    size_t i = IndexArg(info, 0);
    if (kick_fd_[i] >= 0 && state_ != nullptr) epoll_ctl(state_->ep, EPOLL_CTL_DEL, kick_fd_[i], nullptr);
    kick_fd_[i] = -1;
    kicked_[i] = 0;
    ClearWatch(i);
    return info.Env().Undefined();
  }

  // watch(index, view: Uint16Array | null, kind): the ring word of queue `index` that tells new work
  // without a kick (kWatchSplit / kWatchPacked, see there), read together with marks[index]: the loop spins
  // over the watched rings for up to the poll window before it blocks, and a kick that comes for work a spin
  // already found is absorbed. null: no watch. The loop keeps the view alive and looks its memory up again
  // after any munmap (a detached view is no watch), so it never reads a page that is gone; a view of memory
  // that is still mapped but no longer the ring gives spurious or missed spins, never a lost kick (the driver
  // still kicks: the loop does not touch the ring's notification flags).
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t i = IndexArg(info, 0);
    ClearWatch(i);
    if (info[1].IsNull() || info[1].IsUndefined()) return env.Undefined();
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array)
      throw Napi::TypeError::New(env, "KickLoop.watch: view must be a Uint16Array");
    int64_t kind = IntArg(info, 2);
    if (kind != kWatchSplit && kind != kWatchPacked)
      throw Napi::RangeError::New(env, "KickLoop.watch: unknown kind");
    RingWatch& w = watches_[i];
    w.view = Napi::Persistent(info[1].As<Napi::Object>());
    w.kind = static_cast<int32_t>(kind);
    Resolve(w);
    return env.Undefined();
  }

  // setPoll(windowNs): spin over the watched rings for up to this long before blocking; 0: never.
  Napi::Value SetPoll(const Napi::CallbackInfo& info) {
    int64_t ns = IntArg(info, 0);
    if (ns < 0 || ns > 1000000000) throw Napi::RangeError::New(info.Env(), "KickLoop.setPoll: window out of range");
    window_ns_ = ns;
    return info.Env().Undefined();
  }

  // setInterrupt(index, fd, request): how queue `index`'s interrupt is injected: request 0 writes 1 to the
  // eventfd `fd` (a vhost-user call fd), else ioctl(fd, request, &u32 index) (VDUSE_VQ_INJECT_IRQ). fd -1:
  // none (a marked interrupt is dropped). A pending interrupt is injected first with the old target.
  Napi::Value SetInterrupt(const Napi::CallbackInfo& info) {
    size_t i = IndexArg(info, 0);
    FlushOne(i);
    irq_fd_[i] = FdArg(info, 1);
    int64_t raw = IntArg(info, 2);
    irq_request_[i] =
        raw < 0 ? static_cast<unsigned long>(static_cast<uint32_t>(raw)) : static_cast<unsigned long>(raw);
    return info.Env().Undefined();
  }

  Napi::Value Flush(const Napi::CallbackInfo& info) {
    FlushSignals();
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (state_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(&state_->handle));
    return info.Env().Undefined();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    if (state_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(&state_->handle));
    return info.Env().Undefined();
  }

  size_t IndexArg(const Napi::CallbackInfo& info, size_t k) {
    int64_t i = IntArg(info, k);
    if (i < 0 || static_cast<size_t>(i) >= kick_fd_.size())
      throw Napi::RangeError::New(info.Env(), "KickLoop: queue index out of range");
    return static_cast<size_t>(i);
  }

  struct RingWatch {
    Napi::ObjectReference view;
    int32_t kind = kWatchSplit;
    const uint16_t* data = nullptr;  // null: no watch (none set, or its memory went away)
    size_t length = 0;                // in u16
    uint64_t epoch = 0;               // g_unmap_epoch when data was looked up
  };

  void ClearWatch(size_t i) {
    RingWatch& w = watches_[i];
    if (!w.view.IsEmpty()) w.view.Reset();
    w.data = nullptr;
    w.length = 0;
  }

  // Look the watch's memory up (from its view; a detached one has none).
  void Resolve(RingWatch& w) {
    w.epoch = g_unmap_epoch.load(std::memory_order_relaxed);
    w.data = nullptr;
    w.length = 0;
    if (w.view.IsEmpty()) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    if (napi_get_typedarray_info(env, w.view.Value(), &type, &length, &data, nullptr, nullptr) != napi_ok) return;
    if (type != napi_uint16_array || data == nullptr || length < 2) return;
    w.data = static_cast<const uint16_t*>(data);
    w.length = length;
  }

  // Is there work on queue i's ring the device has not seen (per its watch and marks_[i])? False when the
  // queue is not watched or not known idle.
  bool HasWork(size_t i) const {
    int32_t mark = marks_[i];
    const RingWatch& w = watches_[i];
    if (mark < 0 || w.data == nullptr || kick_fd_[i] < 0) return false;
    if (w.kind == kWatchSplit) {
      uint16_t idx = __atomic_load_n(&w.data[1], __ATOMIC_ACQUIRE);
      return idx != static_cast<uint16_t>(mark);
    }
    size_t word = (static_cast<size_t>(mark) >> 1) * 8 + 7;  // the descriptor's flags (byte 14 of 16)
    if (word >= w.length) return false;
    uint16_t flags = __atomic_load_n(&w.data[word], __ATOMIC_ACQUIRE);
    uint32_t wrap = static_cast<uint32_t>(mark) & 1;
    uint32_t avail = (flags >> 7) & 1;  // VIRTQ_DESC_F_AVAIL
    uint32_t used = (flags >> 15) & 1;  // VIRTQ_DESC_F_USED
    return avail == wrap && used != wrap;
  }

  bool Watched(size_t i) const { return marks_[i] >= 0 && watches_[i].data != nullptr && kick_fd_[i] >= 0; }

  enum SpinResult { kSpinNothing, kSpinWork, kSpinEvents };

  // Before blocking for up to timeout_ms (-1: no limit): spin over the watched rings for up to the poll
  // window. kSpinWork: queues with new work are marked in kicked_ (2); kSpinEvents: an fd of the epoll set is
  // ready (the caller's epoll_wait returns at once); kSpinNothing: the window passed.
  SpinResult Spin(int timeout_ms) {
    if (window_ns_ <= 0) return kSpinNothing;
    uint64_t epoch = g_unmap_epoch.load(std::memory_order_relaxed);
    bool any = false;
    for (size_t i = 0; i < watches_.size(); i++) {
      if (watches_[i].view.IsEmpty()) continue;
      if (watches_[i].epoch != epoch) Resolve(watches_[i]);
      any = any || Watched(i);
    }
    if (!any) return kSpinNothing;
    int64_t budget = window_ns_;
    if (timeout_ms >= 0 && static_cast<int64_t>(timeout_ms) * 1000000 < budget)
      budget = static_cast<int64_t>(timeout_ms) * 1000000;
    stats_[kStatPolls]++;
    int64_t start = MonotonicNs();
    int64_t deadline = start + budget;
    int64_t next_check = start + kSpinCheckNs;
    for (uint32_t turn = 1;; turn++) {
      bool work = false;
      for (size_t i = 0; i < watches_.size(); i++) {
        if (HasWork(i)) {
          kicked_[i] = 2;  // found by a spin (1: kicked)
          work = true;
        }
      }
      if (work) {
        stats_[kStatPollHits]++;
        stats_[kStatPollNs] += static_cast<double>(MonotonicNs() - start);
        return kSpinWork;
      }
      if ((turn & 15) == 0) {
        int64_t now = MonotonicNs();
        if (now >= deadline) {
          stats_[kStatPollNs] += static_cast<double>(now - start);
          return kSpinNothing;
        }
        if (now >= next_check) {
          next_check = now + kSpinCheckNs;
          epoll_event ev;
          if (epoll_wait(state_->ep, &ev, 1, 0) > 0) {  // level-triggered: reported again by the caller's wait
            stats_[kStatPollNs] += static_cast<double>(MonotonicNs() - start);
            return kSpinEvents;
          }
        }
      }
      CpuRelax();
    }
  }

  void FlushOne(size_t i) {
    if (signals_[i] == 0) return;
    signals_[i] = 0;
    int fd = irq_fd_[i];
    if (fd < 0) return;
    long r;
    if (irq_request_[i] == 0) {
      uint64_t one = 1;
      r = RetryEintr([&] { return write(fd, &one, sizeof one); });
    } else {
      uint32_t index = static_cast<uint32_t>(i);
      r = RetryEintr([&] { return ioctl(fd, irq_request_[i], &index); });
    }
    if (r < 0) {
      stats_[kStatFailedIrqs]++;
      stats_[kStatLastErrno] = -errno;
    } else {
      injected_[i]++;
    }
  }

  void FlushSignals() {
    for (size_t i = 0; i < irq_fd_.size(); i++) FlushOne(i);
  }

  void StopPrepare() {
    if (state_ != nullptr) uv_prepare_stop(&state_->handle);
    if (active_) {
      active_ = false;
      Napi::ObjectWrap<KickLoop>::Unref();
    }
  }

  void CloseHandle() {
    StopPrepare();
    KickLoopState* state = state_;
    if (state == nullptr) return;
    state_ = nullptr;
    state->owner = nullptr;
    napi_remove_async_cleanup_hook(state->cleanup_hook);
    state->cleanup_hook = nullptr;
    // The epoll fd goes now, not when libuv gets to the close callbacks: a caller that closed the loop sees no fd
    // of it left (nothing waits on it any more: a prepare without an owner returns at once).
    close(state->ep);
    state->ep = -1;
    CloseHandles(state);
  }

  static void CloseHandles(KickLoopState* state) {
    uv_close(reinterpret_cast<uv_handle_t*>(&state->handle), OnClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(&state->idle), OnClosed);
  }

  static void OnClosed(uv_handle_t* handle) {
    KickLoopState* state = static_cast<KickLoopState*>(handle->data);
    if (--state->open_handles > 0) return;
    if (state->cleanup_hook != nullptr) napi_remove_async_cleanup_hook(state->cleanup_hook);
    if (state->ep >= 0) close(state->ep);
    delete state;
  }

  static void OnTeardown(napi_async_cleanup_hook_handle, void* data) {
    KickLoopState* state = static_cast<KickLoopState*>(data);
    if (state->owner != nullptr) {
      state->owner->state_ = nullptr;
      state->owner->active_ = false;
      state->owner = nullptr;
    }
    CloseHandles(state);  // removes the hook when done
  }

  static void NoIdle(uv_idle_t*) {}

  // Back to libuv; `no_block`: make its poll phase not wait (see KickLoopState::idle).
  static void ToLibuv(KickLoopState* state, bool no_block) {
    if (no_block) uv_idle_start(&state->idle, NoIdle);
  }

  static void OnPrepare(uv_prepare_t* handle) {
    KickLoopState* state = static_cast<KickLoopState*>(handle->data);
    uv_loop_t* loop = handle->loop;
    uv_idle_stop(&state->idle);
    KickLoop* self = state->owner;
    if (self == nullptr) return;
    // Completions published by libuv callbacks or immediates since the last wait.
    self->FlushSignals();
    constexpr int kEvents = 64;
    epoll_event events[kEvents];
    for (;;) {
      if (WatchersPending(loop)) return ToLibuv(state, true);
      int timeout = uv_backend_timeout(loop);
      bool kicked = false;
      int n = 0;
      if (timeout != 0) {
        SpinResult spun = self->Spin(timeout);
        if (spun == kSpinWork) {
          kicked = true;
          uv_update_time(loop);
        }
        if (spun != kSpinNothing) timeout = 0;
      }
      if (!kicked) {
        n = epoll_wait(state->ep, events, kEvents, timeout);
        uv_update_time(loop);
        if (n < 0) return ToLibuv(state, true);  // EINTR: let libuv run (a signal handler, say)
      }
      bool backend = false;
      for (int k = 0; k < n; k++) {
        uint32_t i = events[k].data.u32;
        if (i == kBackendTag) {
          backend = true;
          continue;
        }
        if (i >= self->kick_fd_.size() || self->kick_fd_[i] < 0) continue;
        uint64_t value;
        if (read(self->kick_fd_[i], &value, sizeof value) == sizeof value) {
          self->kicks_[i]++;
          // The kick of work a spin already found (and the device served): the ring is idle where the device
          // left it, so there is nothing to call for.
          if (self->Watched(i) && !self->HasWork(i)) {
            self->stats_[kStatAbsorbed]++;
            continue;
          }
          self->kicked_[i] = 1;
          kicked = true;
        }
      }
      if (kicked) {
        self->stats_[kStatWakeups]++;
        if (!self->Call()) return ToLibuv(state, true);
        // The callback may have stopped or closed this loop.
        self = state->owner;
        if (self == nullptr || !self->active_) return;
        self->FlushSignals();
      }
      // libuv's poll does not block now: its backend fd is ready, or a timer (immediate, close, stop) is due.
      if (backend || uv_backend_timeout(loop) == 0) return;
    }
  }

  // One MakeCallback into JS (see FdWatcher::OnPoll). False when JS could not run or threw.
  bool Call() {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    napi_value result;
    napi_status status =
        napi_make_callback(env, async_context_, Value(), callback_.Value(), 0, nullptr, &result);
    if (status == napi_ok) return true;
    if (status == napi_pending_exception) {
      napi_value error;
      if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_fatal_exception(env, error);
    }
    return false;
  }

  Napi::FunctionReference callback_;
  Napi::AsyncContext async_context_;
  Napi::ObjectReference arrays_[6];
  int32_t* kicked_ = nullptr;
  int32_t* signals_ = nullptr;
  double* injected_ = nullptr;
  double* stats_ = nullptr;
  std::vector<int> kick_fd_;
  std::vector<int> irq_fd_;
  std::vector<unsigned long> irq_request_;
  KickLoopState* state_ = nullptr;
  bool active_ = false;
  int32_t* marks_ = nullptr;
  double* kicks_ = nullptr;
  std::vector<double> own_kicks_;
  std::vector<RingWatch> watches_;
  int64_t window_ns_ = 0;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("ioctl", Napi::Function::New<Ioctl>(env, "ioctl"));
  exports.Set("mmap", Napi::Function::New<Mmap>(env, "mmap"));
  exports.Set("munmap", Napi::Function::New<Munmap>(env, "munmap"));
  exports.Set("memfdCreate", Napi::Function::New<MemfdCreate>(env, "memfdCreate"));
  exports.Set("eventfd", Napi::Function::New<Eventfd>(env, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New<EventfdRead>(env, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New<EventfdWrite>(env, "eventfdWrite"));
  exports.Set("read", Napi::Function::New<Read>(env, "read"));
  exports.Set("write", Napi::Function::New<Write>(env, "write"));
  exports.Set("preadv2", Napi::Function::New<VectoredIo<false>>(env, "preadv2"));
  exports.Set("pwritev2", Napi::Function::New<VectoredIo<true>>(env, "pwritev2"));
  exports.Set("fallocate", Napi::Function::New<Fallocate>(env, "fallocate"));
  exports.Set("fence", Napi::Function::New<Fence>(env, "fence"));
  exports.Set("netlinkSocket", Napi::Function::New<NetlinkSocket>(env, "netlinkSocket"));
  exports.Set("send", Napi::Function::New<Send>(env, "send"));
  exports.Set("recv", Napi::Function::New<Recv>(env, "recv"));
  exports.Set("unixListen", Napi::Function::New<UnixListen>(env, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New<UnixConnect>(env, "unixConnect"));
  exports.Set("accept", Napi::Function::New<Accept>(env, "accept"));
  exports.Set("socketPair", Napi::Function::New<SocketPair>(env, "socketPair"));
  exports.Set("recvmsg", Napi::Function::New<RecvMsg>(env, "recvmsg"));
  exports.Set("sendmsg", Napi::Function::New<SendMsg>(env, "sendmsg"));
  exports.Set("FdWatcher", FdWatcher::Define(env));
  exports.Set("KickLoop", KickLoop::Define(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(vduse_native, Init)

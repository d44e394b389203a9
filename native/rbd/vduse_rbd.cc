// vduse_rbd: the Ceph RBD backend's native part (build/Release/vduse_rbd.node), separate from vduse_native.
//
// librados.so.2 and librbd.so.1 are loaded at run time with dlopen, so this builds without Ceph's headers and
// loads on a machine without Ceph (load() then says what is missing). The few prototypes used are declared
// below from the documented C API (rados/librados.h, rbd/librbd.h).
//
// Threads. Blocking calls (connect, open, close, size refresh, resize) run on a thread of their own and settle a
// promise on the JS thread through a thread-safe function. I/O is submitted on the JS thread with rbd_aio_*;
// librbd completes it on its own threads, where nothing but librbd's event-socket code runs: the image is set
// up with rbd_set_image_notification(eventfd), librbd queues finished completions on the image and writes the
// eventfd, and the JS thread's fd watcher calls reap(), which takes them with rbd_poll_io_events. The update
// watch callback (a resize or other header change, on a librbd thread) only sets a flag and writes the same
// eventfd. No JavaScript runs on a librbd thread.
//
// Buffers. Each request holds a reference to the ArrayBuffer of every guest buffer it reads into or writes from
// until its completion is reaped, so the memory cannot be collected while librbd uses it.

#include <napi.h>

#include <dlfcn.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// The C API, declared from librados.h / librbd.h (opaque handles are pointers).

typedef void* rados_t;
typedef void* rados_ioctx_t;
typedef void* rbd_image_t;
typedef void* rbd_completion_t;
typedef void (*rbd_callback_t)(rbd_completion_t cb, void* arg);
typedef void (*rbd_update_callback_t)(void* arg);

// rbd_set_image_notification() types (librbd.h: EVENT_TYPE_PIPE = 1, EVENT_TYPE_EVENTFD = 2).
constexpr int kEventTypeEventfd = 2;
// rbd_aio_write_zeroes() zero_flags: RBD_WRITE_ZEROES_FLAG_THICK_PROVISION (write zeroes, keep the objects).
constexpr int kWriteZeroesThickProvision = 1 << 0;
// librbd rejects more iovecs than this in rbd_aio_readv/writev.
constexpr size_t kIovMax = 1024;

struct Api {
  void* rados_lib = nullptr;
  void* rbd_lib = nullptr;
  int (*rados_create)(rados_t*, const char*) = nullptr;
  int (*rados_conf_read_file)(rados_t, const char*) = nullptr;
  int (*rados_conf_set)(rados_t, const char*, const char*) = nullptr;
  int (*rados_conf_parse_env)(rados_t, const char*) = nullptr;
  int (*rados_connect)(rados_t) = nullptr;
  void (*rados_shutdown)(rados_t) = nullptr;
  int (*rados_ioctx_create)(rados_t, const char*, rados_ioctx_t*) = nullptr;
  void (*rados_ioctx_destroy)(rados_ioctx_t) = nullptr;
  void (*rados_ioctx_set_namespace)(rados_ioctx_t, const char*) = nullptr;
  void (*rbd_version)(int*, int*, int*) = nullptr;
  int (*rbd_open)(rados_ioctx_t, const char*, rbd_image_t*, const char*) = nullptr;
  int (*rbd_open_read_only)(rados_ioctx_t, const char*, rbd_image_t*, const char*) = nullptr;
  int (*rbd_close)(rbd_image_t) = nullptr;
  int (*rbd_get_size)(rbd_image_t, uint64_t*) = nullptr;
  int (*rbd_get_stripe_unit)(rbd_image_t, uint64_t*) = nullptr;
  int (*rbd_get_features)(rbd_image_t, uint64_t*) = nullptr;
  int (*rbd_resize)(rbd_image_t, uint64_t) = nullptr;
  int (*rbd_aio_create_completion)(void*, rbd_callback_t, rbd_completion_t*) = nullptr;
  int (*rbd_aio_readv)(rbd_image_t, const struct iovec*, int, uint64_t, rbd_completion_t) = nullptr;
  int (*rbd_aio_writev)(rbd_image_t, const struct iovec*, int, uint64_t, rbd_completion_t) = nullptr;
  int (*rbd_aio_flush)(rbd_image_t, rbd_completion_t) = nullptr;
  int (*rbd_aio_discard)(rbd_image_t, uint64_t, uint64_t, rbd_completion_t) = nullptr;
  // Optional (Ceph 15+).
  int (*rbd_aio_write_zeroes)(rbd_image_t, uint64_t, size_t, rbd_completion_t, int, int) = nullptr;
  ssize_t (*rbd_aio_get_return_value)(rbd_completion_t) = nullptr;
  void* (*rbd_aio_get_arg)(rbd_completion_t) = nullptr;
  void (*rbd_aio_release)(rbd_completion_t) = nullptr;
  int (*rbd_set_image_notification)(rbd_image_t, int, int) = nullptr;
  int (*rbd_poll_io_events)(rbd_image_t, rbd_completion_t*, int) = nullptr;
  int (*rbd_update_watch)(rbd_image_t, uint64_t*, rbd_update_callback_t, void*) = nullptr;
  int (*rbd_update_unwatch)(rbd_image_t, uint64_t) = nullptr;
};

// Loaded once per process (the libraries stay loaded); guarded by g_load_mutex.
Api g_api;
bool g_loaded = false;
std::string g_load_error;
std::mutex g_load_mutex;

template <typename F>
bool Sym(void* lib, const char* name, F* out, std::string* missing) {
  void* p = dlsym(lib, name);
  if (p == nullptr) {
    if (missing != nullptr) {
      if (!missing->empty()) *missing += ", ";
      *missing += name;
    }
    return false;
  }
  *out = reinterpret_cast<F>(p);
  return true;
}

// Empty string on success, else one line saying what is missing.
std::string LoadLibraries(const std::string& rados_path, const std::string& rbd_path) {
  std::lock_guard<std::mutex> lock(g_load_mutex);
  if (g_loaded) return "";
  Api api;
  api.rados_lib = dlopen(rados_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (api.rados_lib == nullptr) {
    const char* e = dlerror();
    return "cannot load " + rados_path + " (" + (e ? e : "unknown error") + ")";
  }
  api.rbd_lib = dlopen(rbd_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (api.rbd_lib == nullptr) {
    const char* e = dlerror();
    std::string message = "cannot load " + rbd_path + " (" + (e ? e : "unknown error") + ")";
    dlclose(api.rados_lib);
    return message;
  }
  std::string missing;
  void* r = api.rados_lib;
  void* b = api.rbd_lib;
  Sym(r, "rados_create", &api.rados_create, &missing);
  Sym(r, "rados_conf_read_file", &api.rados_conf_read_file, &missing);
  Sym(r, "rados_conf_set", &api.rados_conf_set, &missing);
  Sym(r, "rados_conf_parse_env", &api.rados_conf_parse_env, &missing);
  Sym(r, "rados_connect", &api.rados_connect, &missing);
  Sym(r, "rados_shutdown", &api.rados_shutdown, &missing);
  Sym(r, "rados_ioctx_create", &api.rados_ioctx_create, &missing);
  Sym(r, "rados_ioctx_destroy", &api.rados_ioctx_destroy, &missing);
  Sym(r, "rados_ioctx_set_namespace", &api.rados_ioctx_set_namespace, &missing);
  Sym(b, "rbd_version", &api.rbd_version, &missing);
  Sym(b, "rbd_open", &api.rbd_open, &missing);
  Sym(b, "rbd_open_read_only", &api.rbd_open_read_only, &missing);
  Sym(b, "rbd_close", &api.rbd_close, &missing);
  Sym(b, "rbd_get_size", &api.rbd_get_size, &missing);
  Sym(b, "rbd_get_stripe_unit", &api.rbd_get_stripe_unit, &missing);
  Sym(b, "rbd_get_features", &api.rbd_get_features, &missing);
  Sym(b, "rbd_resize", &api.rbd_resize, &missing);
  Sym(b, "rbd_aio_create_completion", &api.rbd_aio_create_completion, &missing);
  Sym(b, "rbd_aio_readv", &api.rbd_aio_readv, &missing);
  Sym(b, "rbd_aio_writev", &api.rbd_aio_writev, &missing);
  Sym(b, "rbd_aio_flush", &api.rbd_aio_flush, &missing);
  Sym(b, "rbd_aio_discard", &api.rbd_aio_discard, &missing);
  Sym(b, "rbd_aio_write_zeroes", &api.rbd_aio_write_zeroes, nullptr);
  Sym(b, "rbd_aio_get_return_value", &api.rbd_aio_get_return_value, &missing);
  Sym(b, "rbd_aio_get_arg", &api.rbd_aio_get_arg, &missing);
  Sym(b, "rbd_aio_release", &api.rbd_aio_release, &missing);
  Sym(b, "rbd_set_image_notification", &api.rbd_set_image_notification, &missing);
  Sym(b, "rbd_poll_io_events", &api.rbd_poll_io_events, &missing);
  Sym(b, "rbd_update_watch", &api.rbd_update_watch, &missing);
  Sym(b, "rbd_update_unwatch", &api.rbd_update_unwatch, &missing);
  if (!missing.empty()) {
    dlclose(api.rbd_lib);
    dlclose(api.rados_lib);
    return rbd_path + " is too old or not librbd (no " + missing + ")";
  }
  g_api = api;
  g_loaded = true;
  return "";
}

// ---------------------------------------------------------------------------------------------
// One open image.

struct Image {
  rados_t cluster = nullptr;
  rados_ioctx_t ioctx = nullptr;
  rbd_image_t image = nullptr;
  int efd = -1;
  uint64_t watch_handle = 0;
  bool watching = false;
  std::atomic<bool> updated{false};
  bool closed = false;
  // Requests submitted and not yet reaped (JS thread only).
  uint32_t in_flight = 0;
};

// The update watch callback: on a librbd thread. Sets the flag and wakes the JS thread; nothing else.
void OnImageUpdated(void* arg) {
  Image* im = static_cast<Image*>(arg);
  im->updated.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t n = write(im->efd, &one, sizeof one);
  (void)n;
}

// One request in librbd.
struct Request {
  double id = 0;
  napi_env env = nullptr;
  std::vector<napi_ref> refs;
  std::vector<struct iovec> iov;
};

void ReleaseRefs(Request* req) {
  for (napi_ref ref : req->refs) napi_delete_reference(req->env, ref);
  req->refs.clear();
}

// Tears down whatever part of an image exists (blocking; not on the JS thread when it may wait).
void Teardown(Image* im) {
  if (im->image != nullptr) {
    if (im->watching) g_api.rbd_update_unwatch(im->image, im->watch_handle);
    im->watching = false;
    g_api.rbd_close(im->image);
    im->image = nullptr;
  }
  if (im->ioctx != nullptr) {
    g_api.rados_ioctx_destroy(im->ioctx);
    im->ioctx = nullptr;
  }
  if (im->cluster != nullptr) {
    g_api.rados_shutdown(im->cluster);
    im->cluster = nullptr;
  }
}

// ---------------------------------------------------------------------------------------------
// Blocking work on a thread of its own, settled on the JS thread.

struct Op {
  std::function<void()> work;
  // Runs on the JS thread after work(): resolves or rejects `deferred`.
  std::function<void(Napi::Env, Napi::Promise::Deferred&)> done;
  // Runs instead of done() when the JS environment is gone (a worker thread ended): free what work() made.
  std::function<void()> abandon;
  Napi::Promise::Deferred deferred;
  Napi::ThreadSafeFunction tsfn;
  explicit Op(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

Napi::Value RunOffLoop(Napi::Env env, Op* op) {
  Napi::Promise promise = op->deferred.Promise();
  op->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                           "vduse-rbd", 0, 1);
  // The caller keeps the loop alive with a timer while it waits (and may stop waiting: a bounded wait).
  op->tsfn.Unref(env);
  std::thread([op]() {
    op->work();
    Napi::ThreadSafeFunction tsfn = op->tsfn;
    napi_status status = tsfn.BlockingCall(op, [](Napi::Env env, Napi::Function, Op* op) {
      try {
        op->done(env, op->deferred);
      } catch (const Napi::Error& e) {
        op->deferred.Reject(e.Value());
      }
      delete op;
    });
    if (status != napi_ok) {
      if (op->abandon) op->abandon();
      delete op;
    }
    tsfn.Release();
  }).detach();
  return promise;
}

Napi::Error ErrnoError(Napi::Env env, int rc, const std::string& stage) {
  int e = rc < 0 ? -rc : rc;
  Napi::Error error = Napi::Error::New(env, stage + ": " + strerror(e));
  error.Set("errno", Napi::Number::New(env, e));
  error.Set("stage", Napi::String::New(env, stage));
  return error;
}

std::string StringOption(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
}

// ---------------------------------------------------------------------------------------------
// The JS class.

class RbdImage : public Napi::ObjectWrap<RbdImage> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RbdImage",
                       {
                           InstanceAccessor<&RbdImage::Fd>("fd"),
                           InstanceAccessor<&RbdImage::InFlight>("inFlight"),
                           InstanceMethod<&RbdImage::Readv>("readv"),
                           InstanceMethod<&RbdImage::Writev>("writev"),
                           InstanceMethod<&RbdImage::Flush>("flush"),
                           InstanceMethod<&RbdImage::Discard>("discard"),
                           InstanceMethod<&RbdImage::WriteZeroes>("writeZeroes"),
                           InstanceMethod<&RbdImage::Reap>("reap"),
                           InstanceMethod<&RbdImage::TakeUpdate>("takeUpdate"),
                           InstanceMethod<&RbdImage::Size>("size"),
                           InstanceMethod<&RbdImage::Resize>("resize"),
                           InstanceMethod<&RbdImage::Close>("close"),
                       });
  }

  explicit RbdImage(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RbdImage>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "RbdImage is made by open()");
    }
    im_ = info[0].As<Napi::External<Image>>().Data();
  }

  ~RbdImage() override {
    // Dropped without close(): close it on a thread of its own if nothing is in flight; else leak it (librbd
    // may still write into memory the requests pinned).
    Image* im = im_;
    if (im == nullptr || im->closed || im->in_flight > 0) return;
    im->closed = true;
    std::thread([im]() {
      Teardown(im);
      if (im->efd >= 0) close(im->efd);
      delete im;
    }).detach();
  }

 private:
  Image* im_ = nullptr;

  Napi::Value Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), im_->efd); }

  Napi::Value InFlight(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), im_->in_flight);
  }

  // Creates the completion for `req`; returns 0 or a negative errno.
  int NewCompletion(Request* req, rbd_completion_t* c) {
    return g_api.rbd_aio_create_completion(req, nullptr, c);
  }

  // After a submit: count it, or undo on failure. Returns the submit's result.
  int Submitted(Request* req, rbd_completion_t c, int rc) {
    if (rc < 0) {
      g_api.rbd_aio_release(c);
      ReleaseRefs(req);
      delete req;
      return rc;
    }
    im_->in_flight++;
    return 0;
  }

  Napi::Value Closed(Napi::Env env) { return Napi::Number::New(env, -ESHUTDOWN); }

  // readv(id, offset, buffers) / writev(id, offset, buffers): 0 when submitted, else a negative errno.
  Napi::Value Vector(const Napi::CallbackInfo& info, bool write) {
    Napi::Env env = info.Env();
    if (im_->closed) return Closed(env);
    double id = info[0].As<Napi::Number>().DoubleValue();
    int64_t offset = info[1].As<Napi::Number>().Int64Value();
    Napi::Array buffers = info[2].As<Napi::Array>();
    uint32_t count = buffers.Length();
    if (count == 0 || count > kIovMax || offset < 0) return Napi::Number::New(env, -EINVAL);
    Request* req = new Request();
    req->id = id;
    req->env = env;
    req->iov.resize(count);
    req->refs.reserve(count);
    for (uint32_t i = 0; i < count; i++) {
      napi_value element = buffers.Get(i);
      napi_typedarray_type type;
      size_t length = 0;
      void* data = nullptr;
      napi_value arraybuffer;
      size_t byte_offset = 0;
      if (napi_get_typedarray_info(env, element, &type, &length, &data, &arraybuffer, &byte_offset) != napi_ok ||
          type != napi_uint8_array) {
        ReleaseRefs(req);
        delete req;
        throw Napi::TypeError::New(env, "rbd: buffers must be Uint8Arrays");
      }
      napi_ref ref;
      napi_create_reference(env, arraybuffer, 1, &ref);
      req->refs.push_back(ref);
      req->iov[i].iov_base = data;
      req->iov[i].iov_len = length;
    }
    rbd_completion_t c;
    int rc = NewCompletion(req, &c);
    if (rc < 0) {
      ReleaseRefs(req);
      delete req;
      return Napi::Number::New(env, rc);
    }
    rc = write ? g_api.rbd_aio_writev(im_->image, req->iov.data(), static_cast<int>(count),
                                      static_cast<uint64_t>(offset), c)
               : g_api.rbd_aio_readv(im_->image, req->iov.data(), static_cast<int>(count),
                                     static_cast<uint64_t>(offset), c);
    return Napi::Number::New(env, Submitted(req, c, rc));
  }

  Napi::Value Readv(const Napi::CallbackInfo& info) { return Vector(info, false); }
  Napi::Value Writev(const Napi::CallbackInfo& info) { return Vector(info, true); }

  // A request without buffers: flush, discard, write-zeroes.
  template <typename Submit>
  Napi::Value Plain(const Napi::CallbackInfo& info, Submit submit) {
    Napi::Env env = info.Env();
    if (im_->closed) return Closed(env);
    Request* req = new Request();
    req->id = info[0].As<Napi::Number>().DoubleValue();
    req->env = env;
    rbd_completion_t c;
    int rc = NewCompletion(req, &c);
    if (rc < 0) {
      delete req;
      return Napi::Number::New(env, rc);
    }
    return Napi::Number::New(env, Submitted(req, c, submit(c)));
  }

  Napi::Value Flush(const Napi::CallbackInfo& info) {
    return Plain(info, [this](rbd_completion_t c) { return g_api.rbd_aio_flush(im_->image, c); });
  }

  Napi::Value Discard(const Napi::CallbackInfo& info) {
    int64_t offset = info[1].As<Napi::Number>().Int64Value();
    int64_t length = info[2].As<Napi::Number>().Int64Value();
    if (offset < 0 || length < 0) return Napi::Number::New(info.Env(), -EINVAL);
    return Plain(info, [this, offset, length](rbd_completion_t c) {
      return g_api.rbd_aio_discard(im_->image, static_cast<uint64_t>(offset), static_cast<uint64_t>(length), c);
    });
  }

  // writeZeroes(id, offset, length, unmap): -ENOTSUP when this librbd has no rbd_aio_write_zeroes. Without
  // unmap the objects stay allocated (RBD_WRITE_ZEROES_FLAG_THICK_PROVISION: zeroes are written).
  Napi::Value WriteZeroes(const Napi::CallbackInfo& info) {
    if (g_api.rbd_aio_write_zeroes == nullptr) return Napi::Number::New(info.Env(), -ENOTSUP);
    int64_t offset = info[1].As<Napi::Number>().Int64Value();
    int64_t length = info[2].As<Napi::Number>().Int64Value();
    int flags = info[3].ToBoolean().Value() ? 0 : kWriteZeroesThickProvision;
    if (offset < 0 || length < 0) return Napi::Number::New(info.Env(), -EINVAL);
    return Plain(info, [this, offset, length, flags](rbd_completion_t c) {
      return g_api.rbd_aio_write_zeroes(im_->image, static_cast<uint64_t>(offset), static_cast<size_t>(length),
                                        c, flags, 0);
    });
  }

  // reap(out: Float64Array): clears the eventfd, moves up to out.length / 2 finished requests into `out` as
  // (id, result) pairs and returns how many. Call again while it returns a full batch.
  Napi::Value Reap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float64Array out = info[0].As<Napi::Float64Array>();
    if (im_->closed) return Napi::Number::New(env, 0);
    uint64_t counter;
    ssize_t n = read(im_->efd, &counter, sizeof counter);
    (void)n;
    constexpr int kBatch = 64;
    rbd_completion_t comps[kBatch];
    int capacity = static_cast<int>(out.ElementLength() / 2);
    if (capacity > kBatch) capacity = kBatch;
    int got = capacity > 0 ? g_api.rbd_poll_io_events(im_->image, comps, capacity) : 0;
    if (got < 0) got = 0;
    for (int i = 0; i < got; i++) {
      Request* req = static_cast<Request*>(g_api.rbd_aio_get_arg(comps[i]));
      ssize_t result = g_api.rbd_aio_get_return_value(comps[i]);
      g_api.rbd_aio_release(comps[i]);
      out[2 * i] = req->id;
      out[2 * i + 1] = static_cast<double>(result);
      ReleaseRefs(req);
      delete req;
      if (im_->in_flight > 0) im_->in_flight--;
    }
    return Napi::Number::New(env, got);
  }

  // takeUpdate(): whether the image header changed (the update watch fired) since the last call.
  Napi::Value TakeUpdate(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), im_->updated.exchange(false, std::memory_order_acq_rel));
  }

  // size(): Promise<number>, the image size (refreshes the header when it changed; may wait for the cluster).
  Napi::Value Size(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Op* op = new Op(env);
    if (im_->closed) {
      op->deferred.Reject(ErrnoError(env, -ESHUTDOWN, "size").Value());
      Napi::Value p = op->deferred.Promise();
      delete op;
      return p;
    }
    Image* im = im_;
    auto rc = std::make_shared<int>(0);
    auto size = std::make_shared<uint64_t>(0);
    op->work = [im, rc, size]() { *rc = g_api.rbd_get_size(im->image, size.get()); };
    op->done = [rc, size](Napi::Env env, Napi::Promise::Deferred& d) {
      if (*rc < 0) d.Reject(ErrnoError(env, *rc, "rbd_get_size").Value());
      else d.Resolve(Napi::Number::New(env, static_cast<double>(*size)));
    };
    return RunOffLoop(env, op);
  }

  // resize(bytes): Promise<void>.
  Napi::Value Resize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t bytes = info[0].As<Napi::Number>().Int64Value();
    Op* op = new Op(env);
    if (im_->closed || bytes < 0) {
      op->deferred.Reject(ErrnoError(env, im_->closed ? -ESHUTDOWN : -EINVAL, "rbd_resize").Value());
      Napi::Value p = op->deferred.Promise();
      delete op;
      return p;
    }
    Image* im = im_;
    auto rc = std::make_shared<int>(0);
    op->work = [im, rc, bytes]() { *rc = g_api.rbd_resize(im->image, static_cast<uint64_t>(bytes)); };
    op->done = [rc](Napi::Env env, Napi::Promise::Deferred& d) {
      if (*rc < 0) d.Reject(ErrnoError(env, *rc, "rbd_resize").Value());
      else d.Resolve(env.Undefined());
    };
    return RunOffLoop(env, op);
  }

  // close(): Promise<void>. Unwatches, closes the image (librbd waits for what is in flight), the pool and the
  // cluster connection. The caller has stopped its fd watcher; the eventfd is closed here.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Op* op = new Op(env);
    if (im_->closed) {
      op->deferred.Resolve(env.Undefined());
      Napi::Value p = op->deferred.Promise();
      delete op;
      return p;
    }
    Image* im = im_;
    im->closed = true;
    im_ = nullptr;
    op->work = [im]() {
      Teardown(im);
      if (im->efd >= 0) close(im->efd);
      im->efd = -1;
    };
    // Requests never reaped (none when the caller waited for them) stay allocated: their memory is librbd's.
    op->done = [im](Napi::Env env, Napi::Promise::Deferred& d) {
      delete im;
      d.Resolve(env.Undefined());
    };
    op->abandon = [im]() { delete im; };
    // Keep answering property reads after close.
    placeholder_.efd = -1;
    placeholder_.closed = true;
    im_ = &placeholder_;
    return RunOffLoop(env, op);
  }

  Image placeholder_;
};

// ---------------------------------------------------------------------------------------------
// Module functions

struct InstanceData {
  Napi::FunctionReference image_class;
};

// load(libradosPath, librbdPath): null when loaded, else one line saying what is missing.
Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string error =
      LoadLibraries(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value());
  if (error.empty()) return env.Null();
  return Napi::String::New(env, error);
}

// version(): "MAJOR.MINOR.EXTRA" of librbd's C API (after load()).
Napi::Value Version(const Napi::CallbackInfo& info) {
  int major = 0, minor = 0, extra = 0;
  if (g_loaded) g_api.rbd_version(&major, &minor, &extra);
  return Napi::String::New(info.Env(),
                           std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(extra));
}

// hasWriteZeroes(): whether librbd has rbd_aio_write_zeroes.
Napi::Value HasWriteZeroes(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), g_loaded && g_api.rbd_aio_write_zeroes != nullptr);
}

struct OpenOptions {
  std::string pool, ns, image, snap, id, conf, keyring, mon;
  bool read_only = false;
  std::vector<std::pair<std::string, std::string>> settings;
};

struct OpenResult {
  Image* im = nullptr;
  int rc = 0;
  std::string stage;
  uint64_t size = 0;
  uint64_t stripe_unit = 0;
  uint64_t features = 0;
};

void DoOpen(const OpenOptions& o, OpenResult* r) {
  Image* im = new Image();
  r->im = im;
  auto fail = [r](int rc, const std::string& stage) {
    r->rc = rc;
    r->stage = stage;
  };
  int rc = g_api.rados_create(&im->cluster, o.id.empty() ? nullptr : o.id.c_str());
  if (rc < 0) return fail(rc, "rados_create");
  if (!o.conf.empty()) {
    rc = g_api.rados_conf_read_file(im->cluster, o.conf.c_str());
    if (rc < 0) return fail(rc, "conf");
  } else {
    // The default search ($CEPH_CONF, /etc/ceph/ceph.conf, ...); none is fine when mon= says where to go.
    g_api.rados_conf_read_file(im->cluster, nullptr);
  }
  g_api.rados_conf_parse_env(im->cluster, nullptr);
  if (!o.keyring.empty()) {
    rc = g_api.rados_conf_set(im->cluster, "keyring", o.keyring.c_str());
    if (rc < 0) return fail(rc, "keyring");
  }
  if (!o.mon.empty()) {
    rc = g_api.rados_conf_set(im->cluster, "mon_host", o.mon.c_str());
    if (rc < 0) return fail(rc, "mon");
  }
  for (const auto& kv : o.settings) {
    rc = g_api.rados_conf_set(im->cluster, kv.first.c_str(), kv.second.c_str());
    if (rc < 0) return fail(rc, "set " + kv.first);
  }
  rc = g_api.rados_connect(im->cluster);
  if (rc < 0) return fail(rc, "connect");
  rc = g_api.rados_ioctx_create(im->cluster, o.pool.c_str(), &im->ioctx);
  if (rc < 0) return fail(rc, "pool");
  if (!o.ns.empty()) g_api.rados_ioctx_set_namespace(im->ioctx, o.ns.c_str());
  const char* snap = o.snap.empty() ? nullptr : o.snap.c_str();
  rc = o.read_only ? g_api.rbd_open_read_only(im->ioctx, o.image.c_str(), &im->image, snap)
                   : g_api.rbd_open(im->ioctx, o.image.c_str(), &im->image, snap);
  if (rc < 0) {
    im->image = nullptr;
    return fail(rc, "open");
  }
  rc = g_api.rbd_get_size(im->image, &r->size);
  if (rc < 0) return fail(rc, "size");
  if (g_api.rbd_get_stripe_unit(im->image, &r->stripe_unit) < 0) r->stripe_unit = 0;
  if (g_api.rbd_get_features(im->image, &r->features) < 0) r->features = 0;
  im->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (im->efd < 0) return fail(-errno, "eventfd");
  rc = g_api.rbd_set_image_notification(im->image, im->efd, kEventTypeEventfd);
  if (rc < 0) return fail(rc, "notification");
  rc = g_api.rbd_update_watch(im->image, &im->watch_handle, OnImageUpdated, im);
  if (rc < 0) return fail(rc, "update watch");
  im->watching = true;
}

void FreeFailedOpen(OpenResult* r) {
  if (r->im == nullptr) return;
  Teardown(r->im);
  if (r->im->efd >= 0) close(r->im->efd);
  delete r->im;
  r->im = nullptr;
}

// open({pool, namespace, image, snap, readOnly, id, conf, keyring, mon, settings: [[key, value]...]}):
// Promise<{image, size, stripeUnit, features}>; rejects with an Error that has errno and stage
// ('connect', 'pool', 'open', ...).
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_loaded) throw Napi::Error::New(env, "rbd: load() the libraries first");
  Napi::Object o = info[0].As<Napi::Object>();
  auto options = std::make_shared<OpenOptions>();
  options->pool = StringOption(o, "pool");
  options->ns = StringOption(o, "namespace");
  options->image = StringOption(o, "image");
  options->snap = StringOption(o, "snap");
  options->id = StringOption(o, "id");
  options->conf = StringOption(o, "conf");
  options->keyring = StringOption(o, "keyring");
  options->mon = StringOption(o, "mon");
  options->read_only = o.Get("readOnly").ToBoolean().Value();
  Napi::Value settings = o.Get("settings");
  if (settings.IsArray()) {
    Napi::Array list = settings.As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Array pair = list.Get(i).As<Napi::Array>();
      options->settings.emplace_back(pair.Get(0u).As<Napi::String>().Utf8Value(),
                                     pair.Get(1u).As<Napi::String>().Utf8Value());
    }
  }
  auto result = std::make_shared<OpenResult>();
  Op* op = new Op(env);
  op->work = [options, result]() {
    DoOpen(*options, result.get());
    if (result->rc < 0) FreeFailedOpen(result.get());
  };
  op->done = [result](Napi::Env env, Napi::Promise::Deferred& d) {
    if (result->rc < 0) {
      d.Reject(ErrnoError(env, result->rc, result->stage).Value());
      return;
    }
    InstanceData* data = env.GetInstanceData<InstanceData>();
    Image* im = result->im;
    result->im = nullptr;
    Napi::Object image = data->image_class.New({Napi::External<Image>::New(env, im)});
    Napi::Object out = Napi::Object::New(env);
    out.Set("image", image);
    out.Set("size", Napi::Number::New(env, static_cast<double>(result->size)));
    out.Set("stripeUnit", Napi::Number::New(env, static_cast<double>(result->stripe_unit)));
    out.Set("features", Napi::Number::New(env, static_cast<double>(result->features)));
    d.Resolve(out);
  };
  op->abandon = [result]() {
    // The thread that asked is gone: close what was opened.
    if (result->im != nullptr) {
      Teardown(result->im);
      if (result->im->efd >= 0) close(result->im->efd);
      delete result->im;
      result->im = nullptr;
    }
  };
  return RunOffLoop(env, op);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstanceData* data = new InstanceData();
  Napi::Function image_class = RbdImage::Define(env);
  data->image_class = Napi::Persistent(image_class);
  env.SetInstanceData<InstanceData>(data);
  exports.Set("load", Napi::Function::New(env, Load));
  exports.Set("version", Napi::Function::New(env, Version));
  exports.Set("hasWriteZeroes", Napi::Function::New(env, HasWriteZeroes));
  exports.Set("open", Napi::Function::New(env, Open));
  exports.Set("RbdImage", image_class);
  return exports;
}

}  // namespace

NODE_API_MODULE(vduse_rbd, Init)

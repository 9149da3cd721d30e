// The C++ side of the `dist` crate: a c10d TCPStore, a ProcessGroupGloo (and, with
// USE_C10D_NCCL, a ProcessGroupNCCL for CUDA tensors) behind a small C ABI.
//
// Tensors arrive as tch's `at::Tensor*` (torch-sys's `tensor` typedef), never copied on the
// way in; collectives work in place on them. Every function catches every C++ exception and
// returns it as a malloc'ed error string (NULL on success) that the caller frees with
// rt_dist_free_str.
//
// Failure diagnosis: each rank runs a heartbeat thread that writes "<beat> <collectives
// entered>" under hb/<rank> in the store every kBeat. When a collective fails (a peer closed
// its connection, a timeout), the failing rank reads every peer's heartbeat twice, kBeat*4
// apart, and names the ranks whose heartbeat stopped (exited or killed) or that are behind in
// the collective count (alive but not in this collective), or the store host if the store is
// gone.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Millis = std::chrono::milliseconds;
constexpr Millis kBeat{250};

char* dup_str(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
  }
  return out;
}

std::string first_line(const std::string& s) {
  // c10::Error messages carry a C++ backtrace after the first lines: keep the message.
  auto pos = s.find("\nException raised from");
  std::string head = pos == std::string::npos ? s : s.substr(0, pos);
  while (!head.empty() && (head.back() == '\n' || head.back() == ' ')) head.pop_back();
  return head;
}

std::string to_string(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

struct Pg {
  int rank = 0;
  int world = 1;
  bool store_host = false;    // this rank serves the TCPStore
  bool rank0_hosts = false;   // rank 0 serves it (not torchrun's agent)
  std::string store_addr;
  Millis timeout{0};
  c10::intrusive_ptr<c10d::Store> store;  // PrefixStore over the TCPStore
  c10::intrusive_ptr<c10d::Backend> gloo;
#ifdef USE_C10D_NCCL
  c10::intrusive_ptr<c10d::Backend> nccl;
#endif
  std::mutex op_lock;  // one collective at a time, in the same order on every rank
  std::atomic<uint64_t> seq{0};
  // heartbeat
  std::thread hb;
  std::mutex hb_m;
  std::condition_variable hb_cv;
  bool hb_stop = false;

  ~Pg() {
    {
      std::lock_guard<std::mutex> g(hb_m);
      hb_stop = true;
    }
    hb_cv.notify_all();
    if (hb.joinable()) hb.join();
  }
};

std::string hb_value(uint64_t beat, uint64_t seq) {
  return std::to_string(beat) + " " + std::to_string(seq);
}

void heartbeat_loop(Pg* pg, c10::intrusive_ptr<c10d::Store> store) {
  uint64_t beat = 1;
  std::unique_lock<std::mutex> lk(pg->hb_m);
  while (!pg->hb_stop) {
    lk.unlock();
    try {
      store->set("hb/" + std::to_string(pg->rank), hb_value(++beat, pg->seq.load()));
    } catch (...) {
      // The store is gone (its host exited): nothing left to report to.
      lk.lock();
      return;
    }
    lk.lock();
    pg->hb_cv.wait_for(lk, kBeat, [pg] { return pg->hb_stop; });
  }
}

struct Beat {
  bool ok = false;
  uint64_t beat = 0;
  uint64_t seq = 0;
};

std::vector<Beat> read_beats(Pg* pg) {
  std::vector<Beat> out(pg->world);
  for (int r = 0; r < pg->world; ++r) {
    auto key = "hb/" + std::to_string(r);
    if (!pg->store->check({key})) continue;
    std::istringstream in(to_string(pg->store->get(key)));
    Beat b;
    if (in >> b.beat >> b.seq) b.ok = true;
    out[r] = b;
  }
  return out;
}

// Which ranks are to blame for a failed collective number `seq`.
std::string diagnose(Pg* pg, uint64_t seq) {
  std::ostringstream msg;
  try {
    pg->store->setTimeout(Millis(2000));
    auto a = read_beats(pg);
    std::this_thread::sleep_for(kBeat * 4);
    auto b = read_beats(pg);
    std::vector<std::string> blame;
    for (int r = 0; r < pg->world; ++r) {
      if (r == pg->rank) continue;
      if (!b[r].ok) {
        blame.push_back("rank " + std::to_string(r) + " never registered");
      } else if (a[r].beat == b[r].beat) {
        blame.push_back("rank " + std::to_string(r) +
                        " has exited or is frozen (no heartbeat for " +
                        std::to_string((kBeat * 4).count()) + " ms)");
      } else if (b[r].seq < seq) {
        blame.push_back("rank " + std::to_string(r) + " is alive but has entered only " +
                        std::to_string(b[r].seq) + " collectives, not " + std::to_string(seq));
      }
    }
    if (blame.empty()) {
      msg << "every other rank is alive and has entered this collective";
    } else {
      for (size_t i = 0; i < blame.size(); ++i) msg << (i ? "; " : "") << blame[i];
    }
  } catch (const std::exception& e) {
    msg << "the store at " << pg->store_addr << " is unreachable"
        << (pg->rank0_hosts ? ": rank 0, which hosts it, has probably exited"
                            : ": the launcher (torchrun agent) serving it is gone")
        << " (" << first_line(e.what()) << ")";
  }
  try {
    pg->store->setTimeout(pg->timeout);
  } catch (...) {
  }
  return msg.str();
}

void check_tensors(at::Tensor** ts, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(ts[i] != nullptr && ts[i]->defined(), "tensor ", i, " is undefined");
  }
}

c10::intrusive_ptr<c10d::Backend> backend_for(Pg* pg, const at::Tensor& t) {
#ifdef USE_C10D_NCCL
  if (t.is_cuda() && pg->nccl) return pg->nccl;
#endif
  (void)t;
  return pg->gloo;
}

void wait(Pg* pg, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(pg->timeout);
}

// Groups consecutive tensors of one dtype and device into buckets of at most `bucket_bytes`
// (a larger tensor is a bucket by itself).
std::vector<std::vector<at::Tensor*>> buckets(at::Tensor** ts, size_t n, int64_t bucket_bytes) {
  std::vector<std::vector<at::Tensor*>> out;
  int64_t bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    at::Tensor* t = ts[i];
    int64_t nb = t->numel() * static_cast<int64_t>(t->element_size());
    bool fresh = out.empty() || out.back().front()->scalar_type() != t->scalar_type() ||
                 out.back().front()->device() != t->device() ||
                 (bucket_bytes > 0 && bytes + nb > bucket_bytes);
    if (fresh) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(t);
    bytes += nb;
  }
  return out;
}

// Runs `op` on one flat buffer per bucket and copies the results back. A bucket holding one
// contiguous tensor is worked on in place.
template <typename Op>
void coalesced(Pg* pg, at::Tensor** ts, size_t n, int64_t bucket_bytes, bool write_back, Op op) {
  for (auto& bucket : buckets(ts, n, bucket_bytes)) {
    if (bucket.size() == 1 && bucket[0]->is_contiguous()) {
      op(*bucket[0]);
      continue;
    }
    std::vector<at::Tensor> flat;
    flat.reserve(bucket.size());
    for (auto* t : bucket) flat.push_back(t->reshape({-1}));
    at::Tensor buf = at::cat(flat);
    op(buf);
    if (!write_back) continue;
    int64_t off = 0;
    for (auto* t : bucket) {
      int64_t k = t->numel();
      t->copy_(buf.narrow(0, off, k).view(t->sizes()));
      off += k;
    }
  }
}

template <typename F>
char* guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup_str(first_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return dup_str(first_line(e.what()));
  } catch (...) {
    return dup_str("unknown C++ exception");
  }
}

// Runs one collective; on failure, names the ranks to blame.
template <typename F>
void collective(Pg* pg, const char* name, F f) {
  std::lock_guard<std::mutex> g(pg->op_lock);
  uint64_t seq = pg->seq.fetch_add(1) + 1;
  try {
    f();
  } catch (const std::exception& e) {
    std::string what;
    if (auto* ce = dynamic_cast<const c10::Error*>(&e)) {
      what = first_line(ce->what_without_backtrace());
    } else {
      what = first_line(e.what());
    }
    std::ostringstream msg;
    msg << "rank " << pg->rank << "/" << pg->world << ": " << name << " (collective #" << seq
        << ") failed: " << diagnose(pg, seq) << " [c10d: " << what << "]";
    throw std::runtime_error(msg.str());
  }
}

}  // namespace

extern "C" {

typedef struct Pg rt_dist_pg;

void rt_dist_free_str(char* s) { std::free(s); }

// Connects to (or, with is_store_host, serves) the TCPStore at host:port and builds the
// process groups. store_mode: 0 = torchrun's agent serves the store, 1 = rank 0 serves it
// (this rank is rank 0 iff rank == 0). `prefix` namespaces every key (torchrun restarts reuse
// its store).
char* rt_dist_new(const char* host, uint16_t port, int rank, int world, int store_mode,
                  int64_t timeout_ms, const char* prefix, const char* gloo_ifname, int use_nccl,
                  rt_dist_pg** out) {
  *out = nullptr;
  return guarded([&] {
    auto pg = std::make_unique<Pg>();
    pg->rank = rank;
    pg->world = world;
    pg->rank0_hosts = store_mode == 1;
    pg->store_host = pg->rank0_hosts && rank == 0;
    pg->timeout = Millis(timeout_ms);
    pg->store_addr = std::string(host) + ":" + std::to_string(port);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = pg->store_host;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = pg->timeout;
    c10::intrusive_ptr<c10d::Store> tcp;
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    } catch (const std::exception& e) {
      std::string what = first_line(e.what());
      throw std::runtime_error("rank " + std::to_string(rank) + "/" + std::to_string(world) +
                               ": cannot " + (pg->store_host ? "serve" : "reach") +
                               " the store at " + pg->store_addr + ": " + what);
    }
    std::string pre(prefix);
    pg->store = c10::make_intrusive<c10d::PrefixStore>(pre, tcp);
    pg->store->set("hb/" + std::to_string(rank), hb_value(1, 0));
    pg->hb = std::thread(heartbeat_loop, pg.get(),
                         c10::make_intrusive<c10d::PrefixStore>(pre, tcp->clone()));

    auto gopts = c10d::ProcessGroupGloo::Options::create(pg->timeout);
    std::string ifs(gloo_ifname);
    if (ifs.empty()) {
      gopts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    } else {
      std::istringstream in(ifs);
      std::string iface;
      while (std::getline(in, iface, ',')) {
        if (!iface.empty())
          gopts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
      }
    }
    try {
      pg->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>("gloo", pg->store), rank, world, gopts);
#ifdef USE_C10D_NCCL
      if (use_nccl) {
        auto nopts = c10d::ProcessGroupNCCL::Options::create();
        nopts->timeout = pg->timeout;
        pg->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
            c10::make_intrusive<c10d::PrefixStore>("nccl", pg->store), rank, world, nopts);
      }
#else
      TORCH_CHECK(!use_nccl, "NCCL requested but the dist crate was built without `nccl`");
#endif
    } catch (const std::exception& e) {
      std::string what = first_line(e.what());
      throw std::runtime_error("rank " + std::to_string(rank) + "/" + std::to_string(world) +
                               ": process group setup via " + pg->store_addr +
                               " failed (a rank did not join within the timeout?): " + what);
    }
    *out = pg.release();
  });
}

void rt_dist_free(rt_dist_pg* pg) {
  try {
    delete pg;
  } catch (...) {
  }
}

// op: 0 = sum, 1 = average. bucket_bytes <= 0: one bucket per dtype/device run.
char* rt_dist_all_reduce(rt_dist_pg* pg, at::Tensor** ts, size_t n, int op,
                         int64_t bucket_bytes) {
  return guarded([&] {
    check_tensors(ts, n);
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(op == 0 || at::isFloatingType(ts[i]->scalar_type()),
                  "average all-reduce needs floating-point tensors; tensor ", i, " is ",
                  ts[i]->scalar_type());
    }
    at::NoGradGuard no_grad;
    collective(pg, op == 0 ? "all_reduce(sum)" : "all_reduce(avg)", [&] {
      coalesced(pg, ts, n, bucket_bytes, true, [&](at::Tensor& buf) {
        std::vector<at::Tensor> v{buf};
        c10d::AllreduceOptions o;
        o.reduceOp = c10d::ReduceOp::SUM;
        o.timeout = pg->timeout;
        wait(pg, backend_for(pg, buf)->allreduce(v, o));
        if (op == 1) buf.div_(pg->world);
      });
    });
  });
}

char* rt_dist_broadcast(rt_dist_pg* pg, at::Tensor** ts, size_t n, int root,
                        int64_t bucket_bytes) {
  return guarded([&] {
    check_tensors(ts, n);
    TORCH_CHECK(root >= 0 && root < pg->world, "broadcast root ", root, " is not a rank of ",
                pg->world);
    at::NoGradGuard no_grad;
    collective(pg, "broadcast", [&] {
      coalesced(pg, ts, n, bucket_bytes, pg->rank != root, [&](at::Tensor& buf) {
        std::vector<at::Tensor> v{buf};
        c10d::BroadcastOptions o;
        o.rootRank = root;
        o.timeout = pg->timeout;
        wait(pg, backend_for(pg, buf)->broadcast(v, o));
      });
    });
  });
}

char* rt_dist_barrier(rt_dist_pg* pg) {
  return guarded([&] {
    collective(pg, "barrier", [&] {
      c10d::BarrierOptions o;
      o.timeout = pg->timeout;
      wait(pg, pg->gloo->barrier(o));
    });
  });
}

// Gathers n doubles from every rank (n equal on all ranks) into out[world * n], rank-major.
char* rt_dist_all_gather_f64(rt_dist_pg* pg, const double* vals, size_t n, double* out) {
  return guarded([&] {
    collective(pg, "all_gather", [&] {
      auto opts = at::TensorOptions().dtype(at::kDouble);
      at::Tensor mine = at::empty({static_cast<int64_t>(n)}, opts);
      if (n > 0) std::memcpy(mine.data_ptr<double>(), vals, n * sizeof(double));
      std::vector<at::Tensor> outs;
      for (int r = 0; r < pg->world; ++r) outs.push_back(at::empty({static_cast<int64_t>(n)}, opts));
      std::vector<std::vector<at::Tensor>> out_lists{outs};
      std::vector<at::Tensor> in{mine};
      c10d::AllgatherOptions o;
      o.timeout = pg->timeout;
      wait(pg, pg->gloo->allgather(out_lists, in, o));
      for (int r = 0; r < pg->world; ++r) {
        if (n > 0)
          std::memcpy(out + r * n, out_lists[0][r].data_ptr<double>(), n * sizeof(double));
      }
    });
  });
}

int rt_dist_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"

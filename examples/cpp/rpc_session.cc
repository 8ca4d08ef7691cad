// rpc_session: serve one TVM RPC session on a connected socket, with uploaded files in a work directory.
//
//   rpc_session <socket fd> <work dir>
//
// The process that accepted the connection (qcompiler.targets.aarch64.rpc_server on the host, or any launcher
// that registers with a TVM RPC tracker and does the key handshake) passes the socket down; this program runs
// the session the client drives: upload, load_module, time_evaluator, Relax VM calls. It exits when the client
// closes the session. Built like run_artifact (see CMakeLists.txt); on an x86 host it runs under qemu-aarch64,
// so the code the client loads executes as aarch64 code.
//
// The TVM runtime provides the session loop (rpc.ServerLoop) and upload/download/remove, which write and read
// files through tvm.rpc.server.workpath; this program defines that and tvm.rpc.server.load_module (the two
// functions TVM's Python server defines).
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

namespace ffi = tvm::ffi;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: rpc_session <socket fd> <work dir>\n";
    return 2;
  }
  const int64_t socket_fd = std::strtoll(argv[1], nullptr, 10);
  const std::string work_dir = argv[2];
  try {
    ffi::Function::SetGlobal(
        "tvm.rpc.server.workpath",
        ffi::Function::FromTyped([work_dir](ffi::String name) { return ffi::String(work_dir + "/" + std::string(name)); }));
    ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped([work_dir](ffi::String name) {
                               return ffi::Module::LoadFromFile(ffi::String(work_dir + "/" + std::string(name)));
                             }));
    ffi::Function::GetGlobalRequired("rpc.ServerLoop")(socket_fd);
  } catch (const std::exception& err) {
    std::cerr << "rpc_session: " << err.what() << "\n";
    return 1;
  }
  return 0;
}

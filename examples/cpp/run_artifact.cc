// run_artifact: run a qc artifact on raw input files and write raw output files.
//
//   run_artifact <artifact_dir> <in_0.bin> [<in_1.bin> ...] --out <dir> [--float] [--repeat N] [--threads N]
//
// Without --float, in_i.bin holds the raw bytes (C order, native endianness) of integer input i in
// manifest["library"]["inputs"] order; with --float, it holds float32 values of model input i in
// manifest["inputs"] order, quantized here as ONNX QuantizeLinear does. Integer outputs are written as
// <dir>/out_<i>.bin in manifest["library"]["outputs"] order; with --float, dequantized model outputs are also
// written as <dir>/float_out_<i>.bin (float32) in manifest["outputs"] order. One line per output goes to
// stdout; --repeat N runs the model N more times and prints the mean wall time; --threads N sizes the CPU
// thread pool (default: every core).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "qc_runtime.h"

namespace {

void WriteFile(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string Shape(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? "," : "") + std::to_string(shape[i]);
  return text + "]";
}

int Usage() {
  std::cerr << "usage: run_artifact <artifact_dir> <in_0.bin> ... --out <dir> [--float] [--repeat N] "
               "[--threads N]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string artifact, out_dir;
  std::vector<std::string> files;
  bool float_io = false;
  int repeat = 0;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--out" && i + 1 < argc) {
      out_dir = argv[++i];
    } else if (arg == "--float") {
      float_io = true;
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
      if (threads < 1) return Usage();
    } else if (arg.rfind("--", 0) == 0) {
      return Usage();
    } else if (artifact.empty()) {
      artifact = arg;
    } else {
      files.push_back(arg);
    }
  }
  if (artifact.empty() || out_dir.empty()) return Usage();
  try {
    if (threads) qc::SetNumThreads(threads);
    qc::Model model(artifact);
    size_t expected = float_io ? model.float_inputs().size() : model.inputs().size();
    if (files.size() != expected) {
      throw std::runtime_error("the model has " + std::to_string(expected) + " input(s), got " +
                               std::to_string(files.size()) + " file(s)");
    }
    std::vector<tvm::ffi::Tensor> args;
    for (size_t i = 0; i < model.inputs().size(); ++i) args.push_back(model.NewInput(i));
    for (size_t i = 0; i < files.size(); ++i) {
      std::string bytes = qc::ReadFile(files[i]);
      if (float_io) {
        const qc::BoundarySpec& b = model.float_inputs()[i];
        size_t slot = 0;
        while (model.inputs()[slot].name != b.int_name) ++slot;
        if (bytes.size() != static_cast<size_t>(model.inputs()[slot].NumElements()) * sizeof(float)) {
          throw std::runtime_error(files[i] + ": wrong size for float32 input '" + b.name + "'");
        }
        std::vector<float> values(bytes.size() / sizeof(float));
        std::memcpy(values.data(), bytes.data(), bytes.size());
        args[slot] = model.QuantizeFloat(i, values.data());
      } else {
        const qc::TensorSpec& spec = model.inputs()[i];
        if (bytes.size() != spec.NumBytes()) {
          throw std::runtime_error(files[i] + ": " + std::to_string(bytes.size()) + " bytes, input '" +
                                   spec.name + "' (" + spec.dtype + Shape(spec.shape) + ") needs " +
                                   std::to_string(spec.NumBytes()));
        }
        std::memcpy(args[i].data_ptr(), bytes.data(), bytes.size());
      }
    }
    std::vector<tvm::ffi::Tensor> outs = model.Run(args);
    for (size_t i = 0; i < outs.size(); ++i) {
      const qc::TensorSpec& spec = model.outputs()[i];
      std::string path = out_dir + "/out_" + std::to_string(i) + ".bin";
      WriteFile(path, outs[i].data_ptr(), spec.NumBytes());
      std::cout << "output " << i << " " << spec.name << " " << spec.dtype << Shape(spec.shape) << " -> " << path
                << "\n";
    }
    if (float_io) {
      for (size_t i = 0; i < model.float_outputs().size(); ++i) {
        std::vector<float> values = model.DequantizeToFloat(i, outs[model.FloatOutputIndex(i)]);
        std::string path = out_dir + "/float_out_" + std::to_string(i) + ".bin";
        WriteFile(path, values.data(), values.size() * sizeof(float));
        std::cout << "float output " << i << " " << model.float_outputs()[i].name << " -> " << path << "\n";
      }
    }
    if (repeat > 0) {
      auto start = std::chrono::steady_clock::now();
      for (int r = 0; r < repeat; ++r) model.Run(args);
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      std::cout << "mean_ms " << ms / repeat << "\n";
    }
  } catch (const std::exception& err) {
    std::cerr << "run_artifact: " << err.what() << "\n";
    return 1;
  }
  return 0;
}

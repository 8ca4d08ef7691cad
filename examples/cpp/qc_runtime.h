// qc_runtime.h: run a qc artifact (model.so + manifest.json) from C++ through the TVM Relax VM.
//
// Header-only; needs the tvm-ffi headers (<site-packages>/tvm_ffi/include) and links against libtvm_ffi and
// libtvm_runtime (the latter with -Wl,--no-as-needed: nothing calls it directly, but loading it registers
// the VM that model.so's `vm_load_executable` needs). The same source builds for x86-64 and aarch64.
//
//   qc::Model model("/path/to/artifact");                 // reads manifest.json, loads model.so
//   std::vector<tvm::ffi::Tensor> in = {model.NewInput(0)};  // fill in[0].data_ptr() with integer codes
//   std::vector<tvm::ffi::Tensor> out = model.Run(in);       // integer outputs, in manifest order
//
// Integer I/O follows manifest["library"]["inputs"/"outputs"] (the integer region's tensors). Float I/O
// follows manifest["inputs"/"outputs"] (scale, zero_point, int_dtype): QuantizeFloat is ONNX QuantizeLinear
// (round half to even of x / scale in float32, plus the zero point, saturated), DequantizeToFloat is ONNX
// DequantizeLinear ((q - zero_point) * scale in float32), both exactly as qcompiler.qmath computes them.
#ifndef QC_RUNTIME_H_
#define QC_RUNTIME_H_

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace qc {

namespace ffi = tvm::ffi;

// ---- a small, complete JSON reader (manifest.json is written by Python's json module) ------------------

struct Json {
  enum Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = kNull;
  bool boolean = false;
  double number = 0;
  std::string text;  // kString: the value; kNumber: the literal as written (exact for int64)
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  const Json& operator[](const std::string& key) const {
    auto it = fields.find(key);
    if (kind != kObject || it == fields.end()) throw std::runtime_error("manifest: missing key '" + key + "'");
    return it->second;
  }
  bool Has(const std::string& key) const { return kind == kObject && fields.count(key) > 0; }
  int64_t Int() const {
    if (kind != kNumber) throw std::runtime_error("manifest: expected a number");
    return std::strtoll(text.c_str(), nullptr, 10);
  }
  const std::string& Str() const {
    if (kind != kString) throw std::runtime_error("manifest: expected a string");
    return text;
  }

  static Json Parse(const std::string& source) {
    size_t pos = 0;
    Json value = ParseValue(source, pos);
    SkipSpace(source, pos);
    if (pos != source.size()) Fail(pos, "trailing characters");
    return value;
  }

 private:
  [[noreturn]] static void Fail(size_t pos, const std::string& why) {
    throw std::runtime_error("manifest: invalid JSON at byte " + std::to_string(pos) + ": " + why);
  }
  static void SkipSpace(const std::string& s, size_t& pos) {
    while (pos < s.size() && std::strchr(" \t\r\n", s[pos]) != nullptr) ++pos;
  }
  static void Expect(const std::string& s, size_t& pos, const char* word) {
    size_t n = std::strlen(word);
    if (s.compare(pos, n, word) != 0) Fail(pos, std::string("expected ") + word);
    pos += n;
  }
  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  static uint32_t Hex4(const std::string& s, size_t& pos) {
    if (pos + 4 > s.size()) Fail(pos, "short \\u escape");
    uint32_t cp = static_cast<uint32_t>(std::stoul(s.substr(pos, 4), nullptr, 16));
    pos += 4;
    return cp;
  }
  static std::string ParseString(const std::string& s, size_t& pos) {
    std::string out;
    ++pos;  // opening quote
    while (pos < s.size() && s[pos] != '"') {
      char c = s[pos++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos >= s.size()) Fail(pos, "unterminated escape");
      char e = s[pos++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = Hex4(s, pos);
          if (cp >= 0xD800 && cp < 0xDC00 && s.compare(pos, 2, "\\u") == 0) {
            pos += 2;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (Hex4(s, pos) - 0xDC00);
          }
          AppendUtf8(out, cp);
          break;
        }
        default: Fail(pos, "bad escape");
      }
    }
    if (pos >= s.size()) Fail(pos, "unterminated string");
    ++pos;  // closing quote
    return out;
  }
  static Json ParseValue(const std::string& s, size_t& pos) {
    SkipSpace(s, pos);
    if (pos >= s.size()) Fail(pos, "unexpected end");
    Json v;
    char c = s[pos];
    if (c == '{') {
      v.kind = kObject;
      ++pos;
      SkipSpace(s, pos);
      if (pos < s.size() && s[pos] == '}') return ++pos, v;
      while (true) {
        SkipSpace(s, pos);
        if (pos >= s.size() || s[pos] != '"') Fail(pos, "expected a key");
        std::string key = ParseString(s, pos);
        SkipSpace(s, pos);
        Expect(s, pos, ":");
        v.fields[key] = ParseValue(s, pos);
        SkipSpace(s, pos);
        if (pos < s.size() && s[pos] == ',') { ++pos; continue; }
        Expect(s, pos, "}");
        return v;
      }
    }
    if (c == '[') {
      v.kind = kArray;
      ++pos;
      SkipSpace(s, pos);
      if (pos < s.size() && s[pos] == ']') return ++pos, v;
      while (true) {
        v.items.push_back(ParseValue(s, pos));
        SkipSpace(s, pos);
        if (pos < s.size() && s[pos] == ',') { ++pos; continue; }
        Expect(s, pos, "]");
        return v;
      }
    }
    if (c == '"') {
      v.kind = kString;
      v.text = ParseString(s, pos);
      return v;
    }
    if (c == 't') { Expect(s, pos, "true"); v.kind = kBool; v.boolean = true; return v; }
    if (c == 'f') { Expect(s, pos, "false"); v.kind = kBool; return v; }
    if (c == 'n') { Expect(s, pos, "null"); return v; }
    if (s.compare(pos, 3, "NaN") == 0 || s.compare(pos, 8, "Infinity") == 0 ||
        s.compare(pos, 9, "-Infinity") == 0) {
      Fail(pos, "non-finite number");
    }
    size_t start = pos;
    while (pos < s.size() && std::strchr("+-0123456789.eE", s[pos]) != nullptr) ++pos;
    if (start == pos) Fail(pos, "unexpected character");
    v.kind = kNumber;
    v.text = s.substr(start, pos - start);
    v.number = std::strtod(v.text.c_str(), nullptr);
    return v;
  }
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// ---- tensors ---------------------------------------------------------------------------------------------

struct TensorSpec {
  std::string name;
  std::string dtype;  // numpy name: int8, uint8, int16, int32, int64, bool
  std::vector<int64_t> shape;

  int64_t NumElements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t NumBytes() const { return static_cast<size_t>(NumElements()) * ((DLType().bits + 7) / 8); }
  DLDataType DLType() const {
    static const std::map<std::string, DLDataType> kTypes = {
        {"int8", {kDLInt, 8, 1}},   {"int16", {kDLInt, 16, 1}},  {"int32", {kDLInt, 32, 1}},
        {"int64", {kDLInt, 64, 1}}, {"uint8", {kDLUInt, 8, 1}},  {"uint16", {kDLUInt, 16, 1}},
        {"uint32", {kDLUInt, 32, 1}}, {"bool", {kDLBool, 8, 1}}};
    auto it = kTypes.find(dtype);
    if (it == kTypes.end()) throw std::runtime_error("tensor '" + name + "': unsupported dtype " + dtype);
    return it->second;
  }
  static TensorSpec FromJson(const Json& j) {
    TensorSpec spec{j["name"].Str(), j["dtype"].Str(), {}};
    for (const Json& d : j["shape"].items) spec.shape.push_back(d.Int());
    return spec;
  }
};

// Model-boundary (float) side of one integer tensor: manifest["inputs"/"outputs"] entries.
struct BoundarySpec {
  std::string name, int_name, int_dtype;
  float scale = 1.0f;
  int64_t zero_point = 0;
};

struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

inline ffi::Tensor NewTensor(const TensorSpec& spec) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(spec.shape), spec.DLType(), DLDevice{kDLCPU, 0});
}

// ONNX QuantizeLinear of one float32 value (qcompiler.qmath.quantize): NaN gives qmin.
inline int64_t QuantizeValue(float x, float scale, int64_t zero_point, int64_t qmin, int64_t qmax) {
  float scaled = x / scale;  // float32 division, as onnxruntime and numpy do
  if (std::isnan(scaled)) return qmin;
  double q = static_cast<double>(std::nearbyint(scaled)) + static_cast<double>(zero_point);  // half to even
  if (q < static_cast<double>(qmin)) return qmin;
  if (q > static_cast<double>(qmax)) return qmax;
  return static_cast<int64_t>(q);
}

// ---- the model ---------------------------------------------------------------------------------------------

// TVM creates its thread pool once per thread, on first use, with TVM_NUM_THREADS workers or else half the
// logical CPUs on x86 (it assumes hyper-threading), which no later config_threadpool call can raise. Setting
// TVM_NUM_THREADS (unless the user did) before the first Model or SetNumThreads gives every core.
inline void SizeThreadPoolToAllCores() {
  unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0) setenv("TVM_NUM_THREADS", std::to_string(cores).c_str(), /*overwrite=*/0);
}

// Run the process's CPU thread pool (shared by every Model) on `num_threads` workers. Without a call the
// pool uses TVM_NUM_THREADS, else every core; a call can lower that count, not raise it past the pool's size.
inline void SetNumThreads(int num_threads) {
  if (num_threads < 1) throw std::runtime_error("num_threads must be positive");
  SizeThreadPoolToAllCores();
  ffi::Function::GetGlobalRequired("runtime.config_threadpool")(1, num_threads);  // 1: the big-core pool
}

class Model {
 public:
  // `artifact_dir` holds manifest.json and the library it names (manifest["library"]["library"]).
  explicit Model(const std::string& artifact_dir) {
    SizeThreadPoolToAllCores();
    Json manifest = Json::Parse(ReadFile(artifact_dir + "/manifest.json"));
    const Json& library = manifest["library"];
    for (const Json& j : library["inputs"].items) inputs_.push_back(TensorSpec::FromJson(j));
    for (const Json& j : library["outputs"].items) outputs_.push_back(TensorSpec::FromJson(j));
    for (const char* side : {"inputs", "outputs"}) {
      if (!manifest.Has(side)) continue;
      for (const Json& j : manifest[side].items) {
        BoundarySpec b{j["name"].Str(), j["int_name"].Str(), j["int_dtype"].Str(),
                       static_cast<float>(j["scale"].number), j["zero_point"].Int()};
        (std::string(side) == "inputs" ? float_inputs_ : float_outputs_).push_back(b);
      }
    }
    std::string path = artifact_dir + "/" + library["library"].Str();
    if (path.find('/') == std::string::npos) path = "./" + path;  // dlopen searches paths without '/'
    ffi::Module lib = ffi::Module::LoadFromFile(path);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // (device type, device id, allocator type 2 = pooled) for the CPU
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    main_ = vm->GetFunction("main").value();
    vm_ = vm;
  }

  const std::vector<TensorSpec>& inputs() const { return inputs_; }
  const std::vector<TensorSpec>& outputs() const { return outputs_; }
  const std::vector<BoundarySpec>& float_inputs() const { return float_inputs_; }
  const std::vector<BoundarySpec>& float_outputs() const { return float_outputs_; }

  ffi::Tensor NewInput(size_t i) const { return NewTensor(inputs_.at(i)); }

  // Integer inputs (manifest order) -> integer outputs (manifest order). Shapes and dtypes are checked.
  std::vector<ffi::Tensor> Run(const std::vector<ffi::Tensor>& args) const {
    if (args.size() != inputs_.size()) {
      throw std::runtime_error("expected " + std::to_string(inputs_.size()) + " inputs, got " +
                               std::to_string(args.size()));
    }
    std::vector<ffi::AnyView> packed;
    for (size_t i = 0; i < args.size(); ++i) {
      Check(inputs_[i], args[i], "input");
      packed.emplace_back(args[i]);
    }
    ffi::Any result;
    main_.CallPacked(packed.data(), static_cast<int32_t>(packed.size()), &result);
    std::vector<ffi::Tensor> outs;
    if (auto single = result.as<ffi::Tensor>()) {
      outs.push_back(*single);
    } else {
      for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) outs.push_back(item.cast<ffi::Tensor>());
    }
    if (outs.size() != outputs_.size()) throw std::runtime_error("model returned an unexpected output count");
    for (size_t i = 0; i < outs.size(); ++i) Check(outputs_[i], outs[i], "output");
    return outs;
  }

  // float32 values of model input `i` -> the integer input tensor (ONNX QuantizeLinear).
  ffi::Tensor QuantizeFloat(size_t i, const float* values) const {
    const BoundarySpec& b = float_inputs_.at(i);
    const TensorSpec& spec = SpecNamed(inputs_, b.int_name);
    ffi::Tensor t = NewTensor(spec);
    int64_t n = spec.NumElements();
    if (spec.dtype == "uint8") {
      auto* out = static_cast<uint8_t*>(t.data_ptr());
      for (int64_t k = 0; k < n; ++k) out[k] = static_cast<uint8_t>(QuantizeValue(values[k], b.scale, b.zero_point, 0, 255));
    } else if (spec.dtype == "int8") {
      auto* out = static_cast<int8_t*>(t.data_ptr());
      for (int64_t k = 0; k < n; ++k) out[k] = static_cast<int8_t>(QuantizeValue(values[k], b.scale, b.zero_point, -128, 127));
    } else if (spec.dtype == "int32") {
      auto* out = static_cast<int32_t*>(t.data_ptr());
      for (int64_t k = 0; k < n; ++k) {
        out[k] = static_cast<int32_t>(QuantizeValue(values[k], b.scale, b.zero_point, INT32_MIN, INT32_MAX));
      }
    } else {
      throw std::runtime_error("cannot quantize to " + spec.dtype);
    }
    return t;
  }

  // Integer output tensor of model output `i` -> float32 values (ONNX DequantizeLinear).
  std::vector<float> DequantizeToFloat(size_t i, const ffi::Tensor& t) const {
    const BoundarySpec& b = float_outputs_.at(i);
    const TensorSpec& spec = SpecNamed(outputs_, b.int_name);
    std::vector<float> out(static_cast<size_t>(spec.NumElements()));
    for (size_t k = 0; k < out.size(); ++k) {
      int32_t q = spec.dtype == "uint8" ? static_cast<const uint8_t*>(t.data_ptr())[k]
                  : spec.dtype == "int8" ? static_cast<const int8_t*>(t.data_ptr())[k]
                                         : static_cast<const int32_t*>(t.data_ptr())[k];
      out[k] = static_cast<float>(q - static_cast<int32_t>(b.zero_point)) * b.scale;
    }
    return out;
  }

  // Index of the integer output that model output `i` reads.
  size_t FloatOutputIndex(size_t i) const {
    for (size_t k = 0; k < outputs_.size(); ++k) {
      if (outputs_[k].name == float_outputs_.at(i).int_name) return k;
    }
    throw std::runtime_error("manifest: no integer output " + float_outputs_.at(i).int_name);
  }

 private:
  static const TensorSpec& SpecNamed(const std::vector<TensorSpec>& specs, const std::string& name) {
    for (const TensorSpec& s : specs) {
      if (s.name == name) return s;
    }
    throw std::runtime_error("manifest: no integer tensor named " + name);
  }
  static void Check(const TensorSpec& spec, const ffi::Tensor& t, const char* what) {
    DLDataType want = spec.DLType();
    DLDataType got = t.dtype();
    bool same = got.code == want.code && got.bits == want.bits && got.lanes == want.lanes &&
                t.ndim() == static_cast<int32_t>(spec.shape.size()) && t.IsContiguous();
    for (size_t d = 0; same && d < spec.shape.size(); ++d) same = t.shape()[d] == spec.shape[d];
    if (!same) throw std::runtime_error(std::string(what) + " '" + spec.name + "' does not match the manifest");
  }

  std::vector<TensorSpec> inputs_, outputs_;
  std::vector<BoundarySpec> float_inputs_, float_outputs_;
  ffi::Optional<ffi::Module> vm_;  // keeps the VM (and the library) alive while main_ is used
  ffi::Function main_;
};

}  // namespace qc

#endif  // QC_RUNTIME_H_

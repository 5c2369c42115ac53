// Raw float32 files and PGM pictures for the deploycam C++ callers (main.cpp, aoti_main.cpp).
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace deploycam_io {

inline std::vector<float> read_floats(const std::string& path, std::size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<float> data(count);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (in.gcount() != static_cast<std::streamsize>(count * sizeof(float)))
    throw std::runtime_error(path + " holds fewer than N*C*H*W float32 values");
  return data;
}

// The (N, C, H, W) float32 batch stored in a raw file.
inline torch::Tensor read_batch(const std::string& path, int64_t n, int64_t c, int64_t h, int64_t w) {
  auto data = read_floats(path, static_cast<std::size_t>(n * c * h * w));
  return torch::from_blob(data.data(), {n, c, h, w}, torch::kFloat32).clone();
}

inline void write_floats(const std::string& path, const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kFloat32).cpu();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(c.data_ptr<float>()), static_cast<std::streamsize>(c.numel() * sizeof(float)));
}

inline void write_pgm(const std::string& path, const torch::Tensor& map) {  // map: (H, W) in [0, 1]
  auto bytes = (map.clamp(0, 1) * 255.0 + 0.5).to(torch::kUInt8).contiguous().cpu();
  std::ofstream out(path, std::ios::binary);
  out << "P5\n" << map.size(1) << " " << map.size(0) << "\n255\n";
  out.write(reinterpret_cast<const char*>(bytes.data_ptr<std::uint8_t>()), bytes.numel());
}

}  // namespace deploycam_io

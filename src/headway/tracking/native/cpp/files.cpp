// headway-runner's files (files.h).
#include "files.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace headway_runner {

Job read_key_values(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path + ": cannot be read");
  Job job;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.find(' ');
    const std::string key = line.substr(0, space);
    const std::string value = space == std::string::npos ? "" : line.substr(space + 1);
    if (key == "frame") job.frames.push_back(value);
    else job.values[key] = value;
  }
  return job;
}

std::vector<double> parse_numbers(const std::string& key, const std::string& text, size_t count) {
  std::istringstream in(text);
  std::vector<double> values(count);
  for (double& v : values)
    if (!(in >> v))
      throw InputError(key + " needs " + std::to_string(count) + " numbers, got '" + text + "'");
  return values;
}

std::string number(double v, const char* format) {
  if (!std::isfinite(v)) return "NaN";  // json.loads reads NaN
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, v);
  return buffer;
}

void write_atomic(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp-runner";
  {
    std::ofstream out(temporary, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error(temporary + ": cannot be written");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot be written");
}

std::string json_list(const std::vector<double>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + number(values[i]);
  return out + "]";
}

}  // namespace headway_runner

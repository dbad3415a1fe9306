// headway-runner's files: the job and model files headway writes (plain "key value" lines,
// so the runner needs no JSON library) and the result files it writes back (atomically).
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "images.h"

namespace headway_runner {

struct Job {
  std::map<std::string, std::string> values;
  std::vector<std::string> frames;

  const std::string& get(const std::string& key) const {
    auto it = values.find(key);
    if (it == values.end()) throw InputError("job file has no '" + key + "' line");
    return it->second;
  }
  std::string get(const std::string& key, const std::string& fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : it->second;
  }
  double number(const std::string& key) const {
    try {
      return std::stod(get(key));
    } catch (const std::logic_error&) {
      throw InputError("job file: '" + key + "' is not a number: " + get(key));
    }
  }
};

// Every "key value" line of the file at `path` ("frame" lines in order, in `frames`).
Job read_key_values(const std::string& path);

// `count` numbers from one job line (`key` names it in the error).
std::vector<double> parse_numbers(const std::string& key, const std::string& text, size_t count);

// A number as Python's json writes it ("NaN" for a non-finite one), in `format`.
std::string number(double v, const char* format = "%.17g");

// Written to a temporary name and renamed, so a file that exists is complete.
void write_atomic(const std::string& path, const std::string& text);

std::string json_list(const std::vector<double>& values);

}  // namespace headway_runner

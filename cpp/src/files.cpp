#include "files.hpp"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

#include "vfrt/vfrt.hpp"

namespace vfrt::detail {

namespace fs = std::filesystem;

void replace_folder(const fs::path& ready, const fs::path& target, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(target)) {
    fs::rename(ready, target, ec);
    if (ec) throw Error(Status::io, "cannot write " + what + " " + target.string() + ": " + ec.message());
    return;
  }
  // a fresh empty directory as the aside name: rename() may replace an empty directory
  std::string pattern = (target.parent_path() / ("." + target.filename().string() + ".old-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw Error(Status::io, "cannot replace " + what + " " + target.string() + ": " + std::strerror(errno));
  }
  const fs::path aside = pattern;
  fs::rename(target, aside, ec);
  if (ec) {
    fs::remove(aside);
    throw Error(Status::io, "cannot replace " + what + " " + target.string() + ": " + ec.message());
  }
  fs::rename(ready, target, ec);
  if (ec) {
    std::error_code back;
    fs::rename(aside, target, back);
    throw Error(Status::io, "cannot write " + what + " " + target.string() + ": " + ec.message());
  }
  fs::remove_all(aside, ec);
}

}  // namespace vfrt::detail

// Publishing finished output folders (the C++ side of vfrt/atomic.py's replace_folder).
#pragma once

#include <filesystem>
#include <string>

namespace vfrt::detail {

/// Put the finished folder `ready` at `target` (same file system) by renames only: an existing `target`
/// is renamed aside to `.<name>.old-XXXXXX`, `ready` renamed into place, and only then the old one
/// deleted, so an interruption never leaves a half-deleted `target`; if the rename into place fails, the
/// old folder goes back. Status::io on failure (`what` names the output in the message).
void replace_folder(const std::filesystem::path& ready, const std::filesystem::path& target, const std::string& what);

}  // namespace vfrt::detail

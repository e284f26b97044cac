# System dependencies only: Debian -dev packages and node-llhttp's C sources. Nothing is
# downloaded or vendored.
find_package(PkgConfig REQUIRED)
pkg_check_modules(LIBUV REQUIRED IMPORTED_TARGET libuv)
find_package(fmt REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(ZLIB REQUIRED)

set(LLHTTP_SOURCE_DIR "/usr/share/llhttp" CACHE PATH "llhttp C sources (Debian node-llhttp)")
set(LLHTTP_INCLUDE_DIR "/usr/share/include/llhttp" CACHE PATH "llhttp header (Debian node-llhttp)")
if(NOT EXISTS "${LLHTTP_SOURCE_DIR}/llhttp.c" OR NOT EXISTS "${LLHTTP_INCLUDE_DIR}/llhttp.h")
  message(FATAL_ERROR "llhttp sources not found: apt-get install node-llhttp")
endif()
add_library(llhttp STATIC
  ${LLHTTP_SOURCE_DIR}/llhttp.c ${LLHTTP_SOURCE_DIR}/api.c ${LLHTTP_SOURCE_DIR}/http.c)
target_include_directories(llhttp SYSTEM PUBLIC ${LLHTTP_INCLUDE_DIR})
set_target_properties(llhttp PROPERTIES C_VISIBILITY_PRESET hidden)
target_compile_options(llhttp PRIVATE -O3 -w)

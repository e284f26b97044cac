# CPPUVICORN_SANITIZE="address;undefined" builds everything with ASan+UBSan.
if(CPPUVICORN_SANITIZE)
  list(JOIN CPPUVICORN_SANITIZE "," _san)
  add_compile_options(-fsanitize=${_san} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=${_san})
endif()

function(cppuvicorn_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()

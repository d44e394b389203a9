{
  "targets": [
    {
      "target_name": "vduse_native",
      "sources": ["native/vduse_native.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=9", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-Wall", "-Wextra", "-Wno-unused-parameter"]
    },
    {
      "target_name": "vduse_rbd",
      "sources": ["native/rbd/vduse_rbd.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "defines": ["NAPI_VERSION=9", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
      "libraries": ["-ldl", "-pthread"]
    }
  ]
}

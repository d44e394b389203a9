export * from './binding.js';
export * from './errors.js';
export * from './native.js';
export * from './unix-socket.js';

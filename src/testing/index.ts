export {
  GuestAllocator,
  MockDriver,
  type BufferRef,
  type ChainSpec,
  type MockChain,
  type MockDriverOptions,
  type PackedDescriptor,
  type SplitDescriptor,
  type UsedEntry,
} from './mock-driver.js';
export {
  FakeBinding,
  type FakeBindingOptions,
  type FakeDeviceHandlers,
  type FakeDeviceOptions,
  type SysCallName,
} from './fake-binding.js';
export * as vhostVdpa from './vhost-vdpa/index.js';
export * as vhostUser from './vhost-user/index.js';

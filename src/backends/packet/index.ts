export { NO_OFFLOADS, type PacketBackend, type PacketBackendEvents, type PacketOffloads } from './backend.js';
export { PairEndpoint, createPacketPair, createLoopback, type PacketPairOptions } from './pair.js';
export {
  TapBackend,
  encodeTunIfreq,
  decodeIfreqName,
  tunOffloadFlags,
  TAP_VNET_HDR_SIZE,
  type TapBackendOptions,
} from './tap.js';

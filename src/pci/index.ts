// PCI configuration space emulation, MSI-X table and the config decoder.
export * from './constants.js';
export * from './config-space.js';
export * from './msix.js';
export * from './decode.js';

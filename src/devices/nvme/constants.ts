// NVMe register offsets, opcodes and status codes the controller and the
// host-side driver share (NVM Express Base 1.4, NVM command set).  Names are
// ours; values are the specification's.

/** Controller registers in BAR0 (byte offsets). */
export const NvmeReg = {
  CAP: 0x00,
  VS: 0x08,
  INTMS: 0x0c,
  INTMC: 0x10,
  CC: 0x14,
  CSTS: 0x1c,
  NSSR: 0x20,
  AQA: 0x24,
  ASQ: 0x28,
  ACQ: 0x30,
  CMBLOC: 0x38,
  CMBSZ: 0x3c,
  /** First doorbell (SQ 0 tail); with DSTRD 0 each doorbell is 4 bytes. */
  DOORBELLS: 0x1000,
} as const;

/** CC fields. */
export const Cc = {
  EN: 1,
  CSS_SHIFT: 4,
  MPS_SHIFT: 7,
  AMS_SHIFT: 11,
  SHN_SHIFT: 14,
  SHN_MASK: 3 << 14,
  IOSQES_SHIFT: 16,
  IOCQES_SHIFT: 20,
} as const;

/** CSTS fields. */
export const Csts = {
  RDY: 1,
  CFS: 2,
  SHST_SHIFT: 2,
  SHST_MASK: 3 << 2,
  SHST_OCCURRING: 1 << 2,
  SHST_COMPLETE: 2 << 2,
} as const;

/** Version register value for NVMe 1.4. */
export const NVME_VS_1_4 = 0x00010400;

/** Admin command opcodes. */
export const AdminOp = {
  DELETE_SQ: 0x00,
  CREATE_SQ: 0x01,
  GET_LOG_PAGE: 0x02,
  DELETE_CQ: 0x04,
  CREATE_CQ: 0x05,
  IDENTIFY: 0x06,
  ABORT: 0x08,
  SET_FEATURES: 0x09,
  GET_FEATURES: 0x0a,
  ASYNC_EVENT: 0x0c,
  KEEP_ALIVE: 0x18,
  DOORBELL_BUFFER_CONFIG: 0x7c,
} as const;

/** NVM command set opcodes. */
export const IoOp = {
  FLUSH: 0x00,
  WRITE: 0x01,
  READ: 0x02,
  WRITE_ZEROES: 0x08,
  DSM: 0x09,
} as const;

/** Feature identifiers. */
export const Feature = {
  ARBITRATION: 0x01,
  POWER_MGMT: 0x02,
  TEMP_THRESHOLD: 0x04,
  ERROR_RECOVERY: 0x05,
  VOLATILE_WC: 0x06,
  NUM_QUEUES: 0x07,
  IRQ_COALESCE: 0x08,
  IRQ_CONFIG: 0x09,
  WRITE_ATOMIC: 0x0a,
  ASYNC_EVENT: 0x0b,
  TIMESTAMP: 0x0e,
} as const;

/** Log page identifiers. */
export const LogPage = {
  ERROR: 0x01,
  SMART: 0x02,
  FW_SLOT: 0x03,
  CMD_EFFECTS: 0x05,
} as const;

/** Identify CNS values. */
export const Cns = {
  NAMESPACE: 0x00,
  CONTROLLER: 0x01,
  ACTIVE_NS_LIST: 0x02,
  NS_DESCRIPTORS: 0x03,
  /** I/O Command Set specific Identify Controller (here: NVM, all limits 0). */
  CS_CONTROLLER: 0x06,
} as const;

/**
 * Status field values as (SCT << 8) | SC; the CQE carries them shifted left
 * by one (bit 0 of the 16-bit field is the phase tag).
 */
export const Status = {
  SUCCESS: 0x000,
  INVALID_OPCODE: 0x001,
  INVALID_FIELD: 0x002,
  CID_CONFLICT: 0x003,
  DATA_TRANSFER_ERROR: 0x004,
  ABORTED_POWER_LOSS: 0x005,
  INTERNAL: 0x006,
  ABORT_REQUESTED: 0x007,
  ABORTED_SQ_DELETED: 0x008,
  INVALID_NAMESPACE: 0x00b,
  COMMAND_SEQUENCE: 0x00c,
  INVALID_PRP_OFFSET: 0x013,
  LBA_OUT_OF_RANGE: 0x080,
  CAPACITY_EXCEEDED: 0x081,
  // Command specific (SCT 1)
  INVALID_CQ: 0x100,
  INVALID_QID: 0x101,
  INVALID_QSIZE: 0x102,
  ABORT_LIMIT: 0x103,
  AER_LIMIT: 0x105,
  INVALID_FW_SLOT: 0x106,
  INVALID_IV: 0x108,
  INVALID_LOG_PAGE: 0x109,
  INVALID_QUEUE_DELETION: 0x10c,
  FEATURE_NOT_SAVEABLE: 0x10d,
  FEATURE_NOT_CHANGEABLE: 0x10e,
  /** Do Not Retry, ORed into a status. */
  DNR: 0x4000,
} as const;

/** Asynchronous event types (completion dword 0 bits 2:0). */
export const AsyncEventType = {
  ERROR: 0,
  SMART: 1,
  NOTICE: 2,
} as const;

/** Submission queue entry size (bytes) and completion queue entry size. */
export const SQE_SIZE = 64;
export const CQE_SIZE = 16;
/** The only memory page size we support (CAP.MPSMIN = CAP.MPSMAX = 4 KiB). */
export const NVME_PAGE = 4096;

/** The fields of a submission queue entry that hosts set (the rest are zero). */
export interface SqeFields {
  /** Byte 1: fused operation and PSDT bits. */
  flags?: number;
  nsid?: number;
  prp1?: number;
  prp2?: number;
  cdw10?: number;
  cdw11?: number;
  cdw12?: number;
  cdw13?: number;
}

/** A 64-byte submission queue entry (the command identifier, bytes 2-3, is the submitter's to set). */
export function encodeSqe(opcode: number, f: SqeFields = {}): Buffer {
  const b = Buffer.alloc(SQE_SIZE);
  b[0] = opcode;
  b[1] = f.flags ?? 0;
  b.writeUInt32LE(f.nsid ?? 0, 4);
  b.writeBigUInt64LE(BigInt(f.prp1 ?? 0), 24);
  b.writeBigUInt64LE(BigInt(f.prp2 ?? 0), 32);
  b.writeUInt32LE((f.cdw10 ?? 0) >>> 0, 40);
  b.writeUInt32LE((f.cdw11 ?? 0) >>> 0, 44);
  b.writeUInt32LE((f.cdw12 ?? 0) >>> 0, 48);
  b.writeUInt32LE((f.cdw13 ?? 0) >>> 0, 52);
  return b;
}

// Physical Region Page walking: turns a command's PRP1/PRP2 (and the PRP
// lists PRP2 may point to) into the guest memory spans of a transfer.
import { NVME_PAGE, Status } from './constants.js';

/** A contiguous piece of a transfer in guest (IOVA) space. */
export interface DmaSpan {
  iova: number;
  length: number;
}

/** Reads `bytes` of a PRP list at `iova` (throws when it is not mapped). */
export type ListReader = (iova: number, bytes: number) => Buffer | Promise<Buffer>;

/** A PRP entry as a number; null when beyond 2^53 (no mapping can hold it). */
export function prpAt(buf: Buffer, at: number): number | null {
  const hi = buf.readUInt32LE(at + 4);
  if (hi >= 0x200000) return null;
  return hi * 2 ** 32 + buf.readUInt32LE(at);
}

/**
 * The spans of a `length`-byte transfer (length > 0), adjacent ones merged,
 * or a Status value: INVALID_PRP_OFFSET for a misaligned entry,
 * DATA_TRANSFER_ERROR for an entry or list that cannot be reached.
 */
export async function prpSpans(prp1: number | null, prp2: number | null, length: number, readList: ListReader): Promise<DmaSpan[] | number> {
  if (prp1 === null) return Status.DATA_TRANSFER_ERROR;
  if (prp1 % 4 !== 0) return Status.INVALID_PRP_OFFSET;
  const spans: DmaSpan[] = [];
  const push = (iova: number, n: number): void => {
    const last = spans[spans.length - 1];
    if (last !== undefined && last.iova + last.length === iova) last.length += n;
    else spans.push({ iova, length: n });
  };
  const first = Math.min(length, NVME_PAGE - (prp1 % NVME_PAGE));
  push(prp1, first);
  let rem = length - first;
  if (rem === 0) return spans;
  if (prp2 === null) return Status.DATA_TRANSFER_ERROR;
  if (rem <= NVME_PAGE) {
    if (prp2 % NVME_PAGE !== 0) return Status.INVALID_PRP_OFFSET;
    push(prp2, rem);
    return spans;
  }
  // PRP2 points to a list; the last entry of a full list page chains on.
  if (prp2 % 8 !== 0) return Status.INVALID_PRP_OFFSET;
  let list = prp2;
  while (rem > 0) {
    const entries = (NVME_PAGE - (list % NVME_PAGE)) / 8;
    const needed = Math.ceil(rem / NVME_PAGE);
    const chained = needed > entries;
    const take = chained ? entries : needed;
    let buf: Buffer;
    try {
      buf = await readList(list, take * 8);
    } catch {
      return Status.DATA_TRANSFER_ERROR;
    }
    const data = chained ? take - 1 : take;
    for (let i = 0; i < data; i++) {
      const e = prpAt(buf, i * 8);
      if (e === null) return Status.DATA_TRANSFER_ERROR;
      if (e % NVME_PAGE !== 0) return Status.INVALID_PRP_OFFSET;
      const n = Math.min(rem, NVME_PAGE);
      push(e, n);
      rem -= n;
    }
    if (chained) {
      const next = prpAt(buf, data * 8);
      if (next === null) return Status.DATA_TRANSFER_ERROR;
      if (next % 8 !== 0) return Status.INVALID_PRP_OFFSET;
      list = next;
    }
  }
  return spans;
}

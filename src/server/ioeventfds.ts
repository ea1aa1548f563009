// ioeventfds a device offers for doorbell ranges (GET_REGION_IO_FDS): the
// client wires them to KVM so guest writes signal us without a round trip
// through the client.  We own the eventfds and watch them on the event loop.
import { POLL_READABLE, native, requireNative, type PollHandle } from '../native/index.js';
import { IoEventFdFlag, IoFdType } from '../protocol/constants.js';

/** An ioeventfd a device offers (addIoEventFd): a region range whose writes signal it. */
export interface IoEventFdSpec {
  /** The region index. */
  region: number;
  /** Offset in the region. */
  offset: number;
  /** Access size that triggers (0: any). */
  size: number;
  /** Only writes of this value trigger (KVM_IOEVENTFD_FLAG_DATAMATCH). */
  datamatch?: bigint;
  /** I/O port space instead of memory (KVM_IOEVENTFD_FLAG_PIO). */
  pio?: boolean;
  /** Called with the number of signals since the last call. */
  onSignal: (count: number) => void;
}

interface Entry extends IoEventFdSpec {
  fd: number;
  poll: PollHandle;
}

export interface IoFdEntry {
  offset: bigint;
  size: bigint;
  fd: number;
  type: number;
  flags: number;
  datamatch: bigint;
}

export class IoEventFds {
  private readonly entries: Entry[] = [];

  add(spec: IoEventFdSpec): number {
    const n = requireNative('ioeventfds');
    const fd = n.eventfd(0, 1);
    const poll = n.pollStart(fd, POLL_READABLE, () => {
      const v = n.eventfdRead(fd);
      if (v > 0) spec.onSignal(v);
    });
    n.pollRef(poll, false);
    this.entries.push({ ...spec, fd, poll });
    return fd;
  }

  /** Sub-regions of `region` for the GET_REGION_IO_FDS reply. */
  forRegion(region: number): IoFdEntry[] {
    return this.entries
      .filter((e) => e.region === region)
      .map((e) => ({
        offset: BigInt(e.offset),
        size: BigInt(e.size),
        fd: e.fd,
        type: IoFdType.IOEVENTFD,
        flags: (e.datamatch !== undefined ? IoEventFdFlag.DATAMATCH : 0) | (e.pio ? IoEventFdFlag.PIO : 0),
        datamatch: e.datamatch ?? 0n,
      }));
  }

  dispose(): void {
    for (const e of this.entries) {
      native?.pollClose(e.poll);
      native?.close(e.fd);
    }
    this.entries.length = 0;
  }
}

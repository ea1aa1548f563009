// One side of a vfio-user stream socket: frames in (through the Framer),
// bytes and descriptors out.  Two implementations share this interface:
// NativeEndpoint (addon: sendmsg/recvmsg with SCM_RIGHTS) and NetEndpoint
// (node:net, no descriptors).
import type { Frame } from './framer.js';

export interface Endpoint {
  /** Whether descriptors can be sent and received. */
  readonly canPassFds: boolean;
  readonly closed: boolean;
  /** Receives every complete (or rejected) message. */
  onFrame: (f: Frame) => void;
  /** Called once when the endpoint closes; `err` null for a clean EOF/close. */
  onClose: (err: Error | null) => void;
  /**
   * Sends one message given as one or two byte ranges, plus descriptors.
   * Bytes not sent at once are copied, so callers may reuse their buffers;
   * descriptors must stay open until whenDrained() resolves.
   */
  send(a: Buffer, b: Buffer | null, fds: readonly number[] | null): void;
  /** Resolves when everything queued has been written. */
  whenDrained(): Promise<void>;
  setLimits(maxMessageSize: number, maxFds: number): void;
  /**
   * Backpressure: while more than `bytes` of our messages wait to be
   * written (a peer that sends requests but does not read the replies),
   * stop reading from the peer; resume once half of it has gone.
   */
  setSendQueueLimit(bytes: number): void;
  /** Bytes of our messages not yet written to the socket. */
  readonly queuedBytes: number;
  close(): void;
  /** Whether this endpoint keeps the process alive. */
  ref(keep: boolean): void;
}

// One side of a vfio-user stream socket: frames in (through the Framer),
// bytes and descriptors out.  Two implementations share this interface:
// NativeEndpoint (addon: sendmsg/recvmsg with SCM_RIGHTS) and NetEndpoint
// (node:net, no descriptors).
import type { Frame, Placement } from './framer.js';

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
   *
   * With `bStable` the caller promises that `b` stays unchanged until
   * whenDrained() resolves (or the endpoint closes): what the socket does
   * not take at once is then queued by reference instead of copied, so
   * large payloads (migration data) leave with no copy in user space.
   */
  send(a: Buffer, b: Buffer | null, fds: readonly number[] | null, bStable?: boolean): void;
  /**
   * Whether bytes of earlier sends are still queued, waiting for the socket
   * (a stable `b` among them is still referenced).  Small replies copied
   * aside to leave together at the end of the current callback do not
   * count: they hold no caller's buffer.
   */
  readonly sending: boolean;
  /** Resolves when everything queued has been written. */
  whenDrained(): Promise<void>;
  /**
   * Gathers the messages sent from now until the matching uncork(), to
   * leave together (one system call where they fit).  Pipelined requests
   * sent one by one would each wake the peer, which on a shared CPU runs
   * at once and reads only the first; gathered, it reads them all in one
   * wake-up and answers them together.  Nests.
   */
  cork(): void;
  /** Ends a cork(): at the outermost, what was gathered leaves now. */
  uncork(): void;
  setLimits(maxMessageSize: number, maxFds: number): void;
  /** Lets the consumer receive large bodies into its own buffers (see Framer). */
  setPlacement(p: Placement | null): void;
  /**
   * Backpressure: while more than `bytes` of our messages wait to be
   * written (a peer that sends requests but does not read the replies),
   * stop reading from the peer; resume once half of it has gone.
   */
  setSendQueueLimit(bytes: number): void;
  /**
   * Stops reading from the peer (true) until called with false: nothing is
   * read or delivered meanwhile, and what the peer sends waits in the
   * socket, to be delivered in order afterwards.
   */
  holdReading(on: boolean): void;
  /** Bytes of our messages not yet written to the socket. */
  readonly queuedBytes: number;
  close(): void;
  /** Whether this endpoint keeps the process alive. */
  ref(keep: boolean): void;
}

// What a command handler may use of the session it serves.  Handlers depend
// on this leaf only; the Session class builds one context and keeps its own
// state private, so the arrow between them points one way.
import type { Capabilities } from '../../protocol/capabilities.js';
import type { Connection } from '../../transport/connection.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { VfioUserDevice } from '../device.js';

/** Per-connection limits and choices (ServeOptions fills them in). */
export interface SessionOptions {
  /** Largest count we accept in data transfer messages (our max_data_xfer_size). */
  maxDataXferSize: number;
  /** Most descriptors we accept per message (our max_msg_fds). */
  maxMsgFds: number;
  /** Offer twin-socket mode to clients that support it. */
  twinSocket: boolean;
  /** Timeout for our DMA_READ/DMA_WRITE requests to the client. */
  replyTimeoutMs: number;
  /** Commands queued behind a slow (asynchronous) one before EBUSY. */
  maxQueuedCommands: number;
  /** Bytes of those queued commands before EBUSY. */
  maxQueuedBytes: number;
  /** Replies waiting to be written before we stop reading the client's requests. */
  maxSendQueueBytes: number;
}

/** The session as its handlers see it. */
export interface HandlerContext {
  readonly device: VfioUserDevice;
  /** Replies (and our own requests to the client) go through it. */
  readonly conn: Connection;
  readonly opts: Readonly<SessionOptions>;
  /** The client's capabilities; null until VERSION has been answered. */
  readonly clientCaps: Capabilities | null;
  /** Page size for the v1 DIRTY_PAGES command (the client's migration.pgsize). */
  readonly dirtyPageSize: number;
  /** Whether descriptors can reach the client. */
  readonly canPassFds: boolean;
  /** A reusable reply buffer (sends copy what they queue of it). */
  readonly replyBuf: Buffer;
  /** Views of replyBuf for REGION_READ replies of 0..8 bytes: [whole reply, data part]. */
  readonly smallReplies: readonly (readonly [frame: Buffer, out: Buffer])[];
  /** Records what VERSION negotiated (called once, by its handler). */
  negotiated(caps: Capabilities): void;
}

/**
 * A handler replies itself (or throws: the session replies with the error's
 * errno).  It takes descriptors it keeps by emptying `f.fds`; the session
 * closes the rest.  It may return a promise; later commands wait for it.
 */
export type Handler = (s: HandlerContext, f: Frame, via: Endpoint) => void | Promise<void>;

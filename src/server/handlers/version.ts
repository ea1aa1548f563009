// VFIO_USER_VERSION on the server: check the client's proposal, choose the
// session's parameters, offer twin-socket mode, answer with ours.
import { NativeEndpoint } from '../../transport/native-endpoint.js';
import { native } from '../../native/index.js';
import { formatCapabilities, parseCapabilities, type Capabilities } from '../../protocol/capabilities.js';
import { Errno, Feature, VERSION_MAJOR, VERSION_MINOR } from '../../protocol/constants.js';
import { VfuError } from '../../protocol/errors.js';
import { version } from '../../protocol/messages/version.js';
import type { Endpoint } from '../../transport/endpoint.js';
import type { Frame } from '../../transport/framer.js';
import type { HandlerContext } from './context.js';

export function negotiate(s: HandlerContext, f: Frame, via: Endpoint): void {
  if (s.clientCaps !== null) throw new VfuError(Errno.EINVAL, 'VERSION after negotiation');
  if (f.fds.length > 0) throw new VfuError(Errno.EINVAL, 'VERSION carried descriptors');
  const v = version.decode(f.payload);
  if (v.major !== VERSION_MAJOR) throw new VfuError(Errno.EINVAL, `unsupported major version ${v.major}`);
  const client = parseCapabilities(v.json, v.nul);
  const dev = s.device;
  const fdsOk = via.canPassFds && client.maxMsgFds > 0;

  const ours: Partial<Capabilities> = {
    maxMsgFds: via.canPassFds ? s.opts.maxMsgFds : 0,
    maxDataXferSize: s.opts.maxDataXferSize,
    maxDmaMaps: dev.dma.limits.maxMappings,
    pgsizes: 4096,
  };
  if (dev.migration) {
    ours.migration = { pgsize: client.migration?.pgsize ?? 4096, maxBitmapSize: dev.logging.maxReportBytes };
    if (client.migSizing === true) {
      ours.migSizing = { dataSize: Feature.MIG_DATA_SIZE, precopyInfo: Feature.MIG_PRECOPY_INFO };
    }
  }
  if (client.writeMultiple) ours.writeMultiple = true;
  if (client.errorText) ours.errorText = true;

  let twinFds: number[] | null = null;
  if (client.twinSocket?.supported && s.opts.twinSocket && fdsOk && native) {
    const [mine, theirs] = native.socketpair();
    s.conn.attachTwin(new NativeEndpoint(mine, { maxMessageSize: s.opts.maxDataXferSize + 4096, maxFds: 0 }), true);
    ours.twinSocket = { supported: true, fdIndex: 0 };
    twinFds = [theirs];
  }
  const body = version.encode({
    major: VERSION_MAJOR,
    minor: Math.min(v.minor, VERSION_MINOR),
    json: formatCapabilities(ours),
    nul: true,
  });
  s.conn.reply(via, f, body, null, twinFds);
  if (twinFds) {
    const fd = twinFds[0]!;
    void via.whenDrained().then(() => native!.close(fd));
  }
  s.conn.errorText = client.errorText === true;
  const caps = { ...client, ...(ours.migSizing ? { migSizing: ours.migSizing } : {}) };
  s.negotiated(caps);
  dev.emit('connected', caps);
}

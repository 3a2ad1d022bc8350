// Minimal msgpack decoder (the subset voxserve sends: maps, arrays, strings, binary, ints, floats,
// booleans, nil). Written for voxserve; events arrive as msgpack, control goes out as JSON text.
"use strict";
const msgpackDecode = (() => {
  const td = new TextDecoder();
  return function decode(buf) {
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let pos = 0;
    const u8 = () => view.getUint8(pos++);
    const str = (n) => { const s = td.decode(buf.subarray(pos, pos + n)); pos += n; return s; };
    const bin = (n) => { const b = buf.slice(pos, pos + n); pos += n; return b; };
    const map = (n) => { const o = {}; for (let i = 0; i < n; i++) { const k = read(); o[k] = read(); } return o; };
    const arr = (n) => { const a = new Array(n); for (let i = 0; i < n; i++) a[i] = read(); return a; };
    function read() {
      const t = u8();
      if (t <= 0x7f) return t;
      if (t >= 0x80 && t <= 0x8f) return map(t & 0x0f);
      if (t >= 0x90 && t <= 0x9f) return arr(t & 0x0f);
      if (t >= 0xa0 && t <= 0xbf) return str(t & 0x1f);
      if (t >= 0xe0) return t - 256;
      let v;
      switch (t) {
        case 0xc0: return null; case 0xc2: return false; case 0xc3: return true;
        case 0xc4: v = u8(); return bin(v);
        case 0xc5: v = view.getUint16(pos); pos += 2; return bin(v);
        case 0xc6: v = view.getUint32(pos); pos += 4; return bin(v);
        case 0xca: v = view.getFloat32(pos); pos += 4; return v;
        case 0xcb: v = view.getFloat64(pos); pos += 8; return v;
        case 0xcc: return u8();
        case 0xcd: v = view.getUint16(pos); pos += 2; return v;
        case 0xce: v = view.getUint32(pos); pos += 4; return v;
        case 0xcf: v = Number(view.getBigUint64(pos)); pos += 8; return v;
        case 0xd0: v = view.getInt8(pos); pos += 1; return v;
        case 0xd1: v = view.getInt16(pos); pos += 2; return v;
        case 0xd2: v = view.getInt32(pos); pos += 4; return v;
        case 0xd3: v = Number(view.getBigInt64(pos)); pos += 8; return v;
        case 0xd9: v = u8(); return str(v);
        case 0xda: v = view.getUint16(pos); pos += 2; return str(v);
        case 0xdb: v = view.getUint32(pos); pos += 4; return str(v);
        case 0xdc: v = view.getUint16(pos); pos += 2; return arr(v);
        case 0xdd: v = view.getUint32(pos); pos += 4; return arr(v);
        case 0xde: v = view.getUint16(pos); pos += 2; return map(v);
        case 0xdf: v = view.getUint32(pos); pos += 4; return map(v);
      }
      throw new Error("msgpack: unsupported type 0x" + t.toString(16));
    }
    return read();
  };
})();

-- wechat_longlink.lua: Wireshark dissector for the 2013 WeChat long link (the lab wire
-- contract, ../shared/PROTOCOL.md sections 2 and 4).
--
-- Every long-link message is one frame: a 16-byte big-endian header
--   packet_len(4) header_len(2)=16 version(2)=1 cmd(4) seq(4)
-- then a protobuf body. A reply carries cmd + 1000000000 and the request's seq; the server
-- push NOTIFY is cmd 24, seq 0, with a 4-byte big-endian selector as its body.
--
-- Load it with `tshark -X lua_script:wireshark/wechat_longlink.lua ...` or copy it to the
-- personal Lua plugins folder (see wireshark/README.md). Bodies are handed to Wireshark's
-- own Protobuf dissector with the message type of the command, so with
-- testbed/wire/mm.proto on the Protobuf search path every field is decoded by name.
--
-- The command table below is generated from testbed/wire/commands.py by
-- wireshark/generate.py; everything else is hand-written.

local HEADER_LEN = 16
local VERSION = 1
local REPLY_OFFSET = 1000000000
local NOTIFY_CMD = 24
local NOOP_CMD = 6
local DEFAULT_PORT = 8080
local DEFAULT_MAX_PACKET_LEN = 1048576   -- 1 MiB, the contract's default maximum
local PROTO_COL = "WeChat-LL"

-- BEGIN GENERATED COMMAND TABLE
-- Rendered by wireshark/generate.py from testbed/wire/commands.py (COMMANDS).
-- Do not edit by hand: run `python wireshark/generate.py`.
local COMMANDS = {
    [6] = { name = "NOOP", request = nil, response = nil },
    [9] = { name = "UPLOADMSGIMG", request = "testbed.mm.UploadMediaRequest", response = "testbed.mm.UploadMediaResponse" },
    [10] = { name = "GETMSGIMG", request = "testbed.mm.DownloadMediaRequest", response = "testbed.mm.DownloadMediaResponse" },
    [19] = { name = "UPLOADVOICE", request = "testbed.mm.UploadMediaRequest", response = "testbed.mm.UploadMediaResponse" },
    [20] = { name = "DOWNLOADVOICE", request = "testbed.mm.DownloadMediaRequest", response = "testbed.mm.DownloadMediaResponse" },
    [24] = { name = "NOTIFY", request = nil, response = nil, push_only = true },
    [39] = { name = "UPLOADVIDEO", request = "testbed.mm.UploadMediaRequest", response = "testbed.mm.UploadMediaResponse" },
    [40] = { name = "DOWNLOADVIDEO", request = "testbed.mm.DownloadMediaRequest", response = "testbed.mm.DownloadMediaResponse" },
    [71] = { name = "GETCONTACT", request = "testbed.mm.GetContactRequest", response = "testbed.mm.GetContactResponse" },
    [121] = { name = "NEWSYNC", request = "testbed.mm.NewSyncRequest", response = "testbed.mm.NewSyncResponse" },
    [205] = { name = "IDENTIFY", request = "testbed.mm.IdentifyRequest", response = "testbed.mm.IdentifyResponse" },
    [237] = { name = "NEWSENDMSG", request = "testbed.mm.NewSendMsgRequest", response = "testbed.mm.NewSendMsgResponse" },
}
-- every response starts with BaseResponse: what an error reply decodes as
local ERROR_RESPONSE = "testbed.mm.ErrorResponse"
-- END GENERATED COMMAND TABLE

local wechat_ll = Proto("wechat_ll", "WeChat 2013 long link")

-- value strings for the cmd field: requests and their replies
local cmd_vals = {}
for cmd, c in pairs(COMMANDS) do
    cmd_vals[cmd] = c.name
    if not c.push_only then
        cmd_vals[cmd + REPLY_OFFSET] = c.name .. " reply"
    end
end

local f = {
    packet_len  = ProtoField.uint32("wechat_ll.packet_len", "Packet length", base.DEC, nil, nil,
                                    "Whole frame, header included"),
    header_len  = ProtoField.uint16("wechat_ll.header_len", "Header length", base.DEC),
    version     = ProtoField.uint16("wechat_ll.version", "Version", base.DEC),
    cmd         = ProtoField.uint32("wechat_ll.cmd", "Command", base.DEC, cmd_vals),
    cmd_name    = ProtoField.string("wechat_ll.cmd_name", "Command name"),
    is_reply    = ProtoField.bool("wechat_ll.is_reply", "Is reply"),
    request_cmd = ProtoField.uint32("wechat_ll.request_cmd", "Request command", base.DEC,
                                    cmd_vals),
    seq         = ProtoField.uint32("wechat_ll.seq", "Sequence number", base.DEC),
    selector    = ProtoField.uint32("wechat_ll.selector", "NOTIFY selector", base.HEX, nil, nil,
                                    "Sync logs that grew: 0x1 messages, 0x2 contacts, 0x4 profile"),
    body        = ProtoField.bytes("wechat_ll.body", "Body"),
    msg_type    = ProtoField.string("wechat_ll.msg_type", "Protobuf message type"),
    garbage     = ProtoField.bytes("wechat_ll.undissected", "Undissected bytes"),
}
wechat_ll.fields = { f.packet_len, f.header_len, f.version, f.cmd, f.cmd_name, f.is_reply,
                     f.request_cmd, f.seq, f.selector, f.body, f.msg_type, f.garbage }

local e = {
    header_len = ProtoExpert.new("wechat_ll.violation.header_len",
                                 "Protocol violation: header_len != 16",
                                 expert.group.MALFORMED, expert.severity.ERROR),
    version    = ProtoExpert.new("wechat_ll.violation.version",
                                 "Protocol violation: version != 1",
                                 expert.group.MALFORMED, expert.severity.ERROR),
    too_short  = ProtoExpert.new("wechat_ll.violation.packet_len_short",
                                 "Protocol violation: packet_len < 16",
                                 expert.group.MALFORMED, expert.severity.ERROR),
    too_long   = ProtoExpert.new("wechat_ll.violation.packet_len_large",
                                 "Protocol violation: packet_len over the maximum",
                                 expert.group.MALFORMED, expert.severity.ERROR),
    after      = ProtoExpert.new("wechat_ll.after_violation",
                                 "Data after a protocol violation (stream not resynchronised)",
                                 expert.group.SEQUENCE, expert.severity.WARN),
    unknown    = ProtoExpert.new("wechat_ll.unknown_cmd", "Command not in the table",
                                 expert.group.PROTOCOL, expert.severity.WARN),
    notify     = ProtoExpert.new("wechat_ll.notify_body", "NOTIFY body is not 4 bytes",
                                 expert.group.MALFORMED, expert.severity.WARN),
    noop       = ProtoExpert.new("wechat_ll.noop_body", "NOOP carries a body",
                                 expert.group.PROTOCOL, expert.severity.WARN),
    partial    = ProtoExpert.new("wechat_ll.partial", "Frame continues in later segments",
                                 expert.group.REASSEMBLE, expert.severity.NOTE),
    cont       = ProtoExpert.new("wechat_ll.continuation",
                                 "Rest of a frame begun in an earlier segment",
                                 expert.group.REASSEMBLE, expert.severity.NOTE),
}
wechat_ll.experts = { e.header_len, e.version, e.too_short, e.too_long, e.after, e.unknown,
                      e.notify, e.noop, e.partial, e.cont }

wechat_ll.prefs.port = Pref.uint("Long-link TCP port", DEFAULT_PORT,
                                 "TCP port of long.weixin.qq.com (0: none; the lab manifest "
                                 .. "says which port a lab run used)")
wechat_ll.prefs.max_packet_len = Pref.uint("Maximum packet_len", DEFAULT_MAX_PACKET_LEN,
                                           "A larger packet_len is a protocol violation")
wechat_ll.prefs.heuristic = Pref.bool("Recognise the long link on any TCP port", true,
                                      "Heuristic: a valid 16-byte header with a known command")
wechat_ll.prefs.protobuf = Pref.bool("Hand bodies to the Protobuf dissector", true,
                                     "Decode bodies with testbed/wire/mm.proto (set the "
                                     .. "Protobuf search path to testbed/wire)")

local protobuf_dissector = nil
do
    local ok, d = pcall(Dissector.get, "protobuf")
    if ok then protobuf_dissector = d end
end

local f_tcp_stream = Field.new("tcp.stream")
local f_tcp_seq = Field.new("tcp.seq")

-- Per-capture state, reset by init(): which TCP streams are long links, and where a
-- direction of a stream hit a protocol violation (the receiver closes; nothing after it
-- can be framed again).
local stream_is_ll = {}
local violation_at = {}
-- Only with TCP reassembly off: per direction, the tcp.seq where the frame in progress
-- ends, and per packet, how many bytes at its start belong to an earlier frame.
local frame_ends_at = {}
local leading_rest = {}

function wechat_ll.init()
    stream_is_ll = {}
    violation_at = {}
    frame_ends_at = {}
    leading_rest = {}
end

local function stream_id()
    local fi = f_tcp_stream()
    return fi and fi.value or -1
end

local function direction_key(pinfo)
    return tostring(stream_id()) .. "|" .. tostring(pinfo.src) .. ":" .. tostring(pinfo.src_port)
end

-- The Info column: set by the first frame of a packet, appended to by the others.
local function add_info(pinfo, text)
    if tostring(pinfo.cols.protocol) ~= PROTO_COL then
        pinfo.cols.protocol:set(PROTO_COL)
        pinfo.cols.info:set(text)
    else
        pinfo.cols.info:append(", " .. text)
    end
end

-- The header's violation, or nil: the same checks, in the same order, as the receiver.
local function header_violation(plen, hlen, ver)
    local max = wechat_ll.prefs.max_packet_len
    if hlen ~= HEADER_LEN then
        return e.header_len, string.format("Protocol violation: header_len %d != 16", hlen)
    elseif ver ~= VERSION then
        return e.version, string.format("Protocol violation: version %d != 1", ver)
    elseif plen < HEADER_LEN then
        return e.too_short, string.format("Protocol violation: packet_len %d < 16", plen)
    elseif plen > max then
        return e.too_long, string.format("Protocol violation: packet_len %d exceeds the maximum %d",
                                         plen, max)
    end
    return nil
end

local function add_header(tree, tvb)
    tree:add(f.packet_len, tvb(0, 4))
    tree:add(f.header_len, tvb(4, 2))
    tree:add(f.version, tvb(6, 2))
    tree:add(f.cmd, tvb(8, 4))
end

-- One valid frame in `tvb`: exactly packet_len bytes, or (`partial`, TCP reassembly off)
-- the header and what of the body this segment holds.
local function dissect_frame(tvb, pinfo, tree, partial)
    local plen = tvb(0, 4):uint()
    local cmd = tvb(8, 4):uint()
    local seq = tvb(12, 4):uint()
    local is_reply = cmd >= REPLY_OFFSET
    local req = is_reply and (cmd - REPLY_OFFSET) or cmd
    local c = COMMANDS[req]
    if c and is_reply and c.push_only then c = nil end   -- NOTIFY has no reply
    local name = c and c.name or ("cmd " .. req)
    local body_len = plen - HEADER_LEN

    local info
    if partial then
        info = string.format("%s%s seq %d [partial]", name, is_reply and " reply" or "", seq)
    elseif c and req == NOTIFY_CMD and body_len == 4 then
        info = string.format("%s selector 0x%x", name, tvb(HEADER_LEN, 4):uint())
        if seq ~= 0 then info = info .. " seq " .. seq end
    else
        info = string.format("%s%s seq %d", name, is_reply and " reply" or "", seq)
    end

    local st = tree:add(wechat_ll, tvb(), "WeChat long link, " .. info)
    add_header(st, tvb)
    st:add(f.cmd_name, tvb(8, 4), name):set_generated()
    st:add(f.is_reply, tvb(8, 4), is_reply):set_generated()
    st:add(f.request_cmd, tvb(8, 4), req):set_generated()
    st:add(f.seq, tvb(12, 4))
    if not c then
        st:add_proto_expert_info(e.unknown,
                                 string.format("Command %d is not in the command table", cmd))
    end

    if partial then
        if tvb:len() > HEADER_LEN then st:add(f.body, tvb(HEADER_LEN)) end
        st:add_proto_expert_info(e.partial, string.format(
            "Frame of %d bytes, %d in this segment: TCP reassembly is off "
            .. "(tcp.desegment_tcp_streams)", plen, tvb:len()))
        add_info(pinfo, info)
        return
    end

    local msg_type = nil
    if body_len > 0 then
        local body = tvb(HEADER_LEN, body_len)
        st:add(f.body, body)
        if c and req == NOTIFY_CMD then
            if body_len == 4 then
                st:add(f.selector, body)
            else
                st:add_proto_expert_info(e.notify,
                    string.format("NOTIFY body of %d bytes, expected 4", body_len))
            end
        elseif c and req == NOOP_CMD then
            st:add_proto_expert_info(e.noop, string.format("NOOP carries a %d-byte body", body_len))
        elseif c then
            msg_type = is_reply and c.response or c.request
        elseif is_reply then
            msg_type = ERROR_RESPONSE   -- the answer to an unknown command: {1: BaseResponse}
        end
        if msg_type then
            st:add(f.msg_type, tvb(8, 4), msg_type):set_generated()
            if protobuf_dissector and wechat_ll.prefs.protobuf then
                -- the Protobuf dissector writes its own column text: keep ours
                local proto_col = tostring(pinfo.cols.protocol)
                local info_col = tostring(pinfo.cols.info)
                pinfo.private["pb_msg_type"] = "message," .. msg_type
                local ok, err = pcall(Dissector.call, protobuf_dissector, body:tvb(), pinfo, st)
                pinfo.private["pb_msg_type"] = nil
                pinfo.cols.protocol:set(proto_col)
                pinfo.cols.info:set(info_col)
                if not ok then
                    st:add_expert_info(PI_MALFORMED, PI_WARN, "Protobuf dissector failed: "
                                       .. tostring(err))
                end
            end
        end
    end
    add_info(pinfo, info)
end

-- Header fields and the expert error of a violating header at `offset`; the rest of the
-- data cannot be framed.
local function dissect_violation(tvb, pinfo, tree, offset, expert_field, text)
    local rest = tvb(offset)
    local st = tree:add(wechat_ll, rest, "WeChat long link, " .. text)
    local h = tvb(offset, HEADER_LEN):tvb()
    add_header(st, h)
    st:add(f.seq, h(12, 4))
    st:add_proto_expert_info(expert_field, text)
    if rest:len() > HEADER_LEN then
        st:add(f.garbage, tvb(offset + HEADER_LEN))
    end
    add_info(pinfo, text)
    local key = direction_key(pinfo)
    if violation_at[key] == nil or pinfo.number < violation_at[key] then
        violation_at[key] = pinfo.number
    end
end

-- Without TCP reassembly: the bytes at the start of this segment that finish a frame begun
-- in an earlier one (worked out in the first pass, remembered for later visits).
local function rest_of_earlier_frame(tvb, pinfo)
    if pinfo.visited then return leading_rest[pinfo.number] or 0 end
    local n = 0
    local key = direction_key(pinfo)
    local ends = frame_ends_at[key]
    local fi = f_tcp_seq()
    if ends ~= nil and fi ~= nil then
        local seq = fi.value
        if type(ends) == "table" then
            -- a header cut short: its first bytes, and the tcp.seq the frame started at
            if seq ~= ends.start + ends.bytes:len() then
                ends = nil
            else
                local have = ends.bytes:len()
                local need = math.min(HEADER_LEN - have, tvb:len())
                local hdr = ends.bytes .. tvb(0, need):bytes()
                if hdr:len() < 4 then
                    frame_ends_at[key] = { start = ends.start, bytes = hdr }
                    leading_rest[pinfo.number] = tvb:len()
                    return tvb:len()
                end
                local plen = hdr:get_index(0) * 16777216 + hdr:get_index(1) * 65536
                             + hdr:get_index(2) * 256 + hdr:get_index(3)
                ends = ends.start + math.max(plen, HEADER_LEN)
                frame_ends_at[key] = ends
            end
        end
        if ends ~= nil and seq < ends then n = math.min(ends - seq, tvb:len()) end
        if ends == nil or seq + tvb:len() >= ends then frame_ends_at[key] = nil end
    end
    leading_rest[pinfo.number] = n
    return n
end

-- Frames in a TCP payload, reassembled across segments by TCP (desegment_offset/len).
local function dissect_stream(tvb, pinfo, tree)
    local total = tvb:len()
    local at = violation_at[direction_key(pinfo)]
    if at ~= nil and pinfo.number > at then
        local st = tree:add(wechat_ll, tvb(), "WeChat long link, data after a protocol violation")
        st:add(f.garbage, tvb())
        st:add_proto_expert_info(e.after)
        add_info(pinfo, "data after a protocol violation")
        return total
    end
    local reassembling = pinfo.can_desegment > 0
    local offset = 0
    if not reassembling then
        offset = rest_of_earlier_frame(tvb, pinfo)
        if offset > 0 then
            local st = tree:add(wechat_ll, tvb(0, offset),
                                "WeChat long link, rest of an earlier frame")
            st:add(f.body, tvb(0, offset))
            st:add_proto_expert_info(e.cont)
            add_info(pinfo, "[rest of an earlier frame]")
        end
    end
    while offset < total do
        local remaining = total - offset
        if remaining < HEADER_LEN then
            if not reassembling then
                local st = tree:add(wechat_ll, tvb(offset), "WeChat long link, partial header")
                st:add_proto_expert_info(e.partial, "Header continues in the next segment: "
                                         .. "TCP reassembly is off (tcp.desegment_tcp_streams)")
                add_info(pinfo, "[partial header]")
                local fi = f_tcp_seq()
                if not pinfo.visited and fi ~= nil then
                    frame_ends_at[direction_key(pinfo)] = { start = fi.value + offset,
                                                            bytes = tvb(offset):bytes() }
                end
                return total
            end
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            return total
        end
        local plen = tvb(offset, 4):uint()
        local hlen = tvb(offset + 4, 2):uint()
        local ver = tvb(offset + 6, 2):uint()
        local ef, text = header_violation(plen, hlen, ver)
        if ef then
            dissect_violation(tvb, pinfo, tree, offset, ef, text)
            return total
        end
        if remaining < plen then
            if not reassembling then
                dissect_frame(tvb(offset):tvb(), pinfo, tree, true)
                local fi = f_tcp_seq()
                if not pinfo.visited and fi ~= nil then
                    frame_ends_at[direction_key(pinfo)] = fi.value + offset + plen
                end
                return total
            end
            pinfo.desegment_offset = offset
            pinfo.desegment_len = plen - remaining
            return total
        end
        dissect_frame(tvb(offset, plen):tvb(), pinfo, tree, false)
        offset = offset + plen
    end
    return total
end

-- Whatever was registered on the port before us (HTTP on 8080): the short link shares the
-- port number with the long link, on other addresses, so streams that are not long links
-- go on to it.
local port_table = DissectorTable.get("tcp.port")
local registered_port = 0
local previous_handle = nil

local function call_previous(tvb, pinfo, tree)
    -- (only on our port: elsewhere, e.g. a port given to us by Decode As, TCP goes on)
    if previous_handle == nil or pinfo.match_uint ~= registered_port then return 0 end
    -- let the previous dissector ask TCP for more segments, as if TCP had called it
    local saved = pinfo.can_desegment
    if saved > 0 then pinfo.can_desegment = saved + 1 end
    local ok, n = pcall(Dissector.call, previous_handle, tvb, pinfo, tree)
    pinfo.can_desegment = saved
    if not ok then return 0 end
    return n
end

-- Does the start of a stream look like a long-link header (port dissector: lenient, so a
-- violating header on the long-link port is still shown as ours)?
local function looks_like_header(tvb)
    if tvb:len() < 8 then return false end
    return tvb(4, 2):uint() == HEADER_LEN or tvb(6, 2):uint() == VERSION
end

function wechat_ll.dissector(tvb, pinfo, tree)
    local sid = stream_id()
    local known = stream_is_ll[sid]
    if known == nil and tvb:len() < 8 and pinfo.can_desegment > 0 then
        -- too little to tell: wait for more, whoever gets the stream
        pinfo.desegment_offset = 0
        pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
        return tvb:len()
    end
    if known == nil then
        known = looks_like_header(tvb)
        stream_is_ll[sid] = known
    end
    if not known then
        return call_previous(tvb, pinfo, tree)
    end
    return dissect_stream(tvb, pinfo, tree)
end

-- Heuristic, any TCP port: a valid header with a command of the table (or, when the
-- segment holds fewer than 16 bytes, valid packet_len/header_len/version so far).
local function heuristic(tvb, pinfo, tree)
    local n = tvb:len()
    if not wechat_ll.prefs.heuristic or n < 8 then return false end
    local plen = tvb(0, 4):uint()
    if tvb(4, 2):uint() ~= HEADER_LEN or tvb(6, 2):uint() ~= VERSION then return false end
    if plen < HEADER_LEN or plen > wechat_ll.prefs.max_packet_len then return false end
    if n >= 12 then
        local cmd = tvb(8, 4):uint()
        local is_reply = cmd >= REPLY_OFFSET
        local c = COMMANDS[is_reply and (cmd - REPLY_OFFSET) or cmd]
        if c == nil or (is_reply and c.push_only) then return false end
    end
    stream_is_ll[stream_id()] = true
    pinfo.conversation = wechat_ll
    dissect_stream(tvb, pinfo, tree)
    return true
end
wechat_ll:register_heuristic("tcp", heuristic)

local function register_port(port)
    if port == registered_port then return end
    if registered_port ~= 0 then
        port_table:remove(registered_port, wechat_ll)
        if previous_handle ~= nil then port_table:add(registered_port, previous_handle) end
    end
    previous_handle = nil
    registered_port = port
    if port ~= 0 then
        local prev = port_table:get_dissector(port)
        local own = Dissector.get("wechat_ll")
        if prev ~= nil and (own == nil or tostring(prev) ~= tostring(own)) then
            previous_handle = prev
        end
        port_table:add(port, wechat_ll)
    end
end

function wechat_ll.prefs_changed()
    register_port(wechat_ll.prefs.port)
end

register_port(DEFAULT_PORT)

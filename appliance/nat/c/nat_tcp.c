/*
 * TCP session states as a table: next state for (state, event, direction),
 * and which lifetime of a profile applies in each.
 */
#include "nat_internal.h"

const uint8_t tcp_next[NAT_ST__COUNT][EV__COUNT][2] = {
    /*              SYN fwd,rev   SYN-ACK       FIN           RST           other        */
    [NAT_ST_OTHER] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}},
    [NEW_] = {{SS_, MID_}, {MID_, MID_}, {FF_, FR_}, {CL_, CL_}, {MID_, MID_}},
    [SS_] = {{SS_, SS_}, {SS_, SR_}, {FF_, FR_}, {CL_, CL_}, {SS_, SS_}},
    [SR_] = {{SR_, SR_}, {SR_, SR_}, {FF_, FR_}, {CL_, CL_}, {EST_, SR_}},
    [MID_] = {{MID_, MID_}, {MID_, MID_}, {FF_, FR_}, {CL_, CL_}, {MID_, EST_}},
    [EST_] = {{EST_, EST_}, {EST_, EST_}, {FF_, FR_}, {CL_, CL_}, {EST_, EST_}},
    [FF_] = {{FF_, FF_}, {FF_, FF_}, {FF_, CL_}, {CL_, CL_}, {FF_, FF_}},
    [FR_] = {{FR_, FR_}, {FR_, FR_}, {CL_, FR_}, {CL_, CL_}, {FR_, FR_}},
    [CL_] = {{SS_, CL_}, {CL_, CL_}, {CL_, CL_}, {CL_, CL_}, {CL_, CL_}},
};

const uint8_t state_lifetime[NAT_ST__COUNT] = {
    [NAT_ST_OTHER] = NAT_LT_SESSION,      [NEW_] = NAT_LT_SYN,
    [SS_] = NAT_LT_SYN,                   [SR_] = NAT_LT_SYN,
    [MID_] = NAT_LT_SESSION,              [EST_] = NAT_LT_ESTABLISHED,
    [FF_] = NAT_LT_HALF_CLOSED,           [FR_] = NAT_LT_HALF_CLOSED,
    [CL_] = NAT_LT_CLOSING,
};
